"""Chat models behind the generator, teacher and judge roles.

One required method, ``stream(messages)``, yields text pieces; ``generate`` joins them and
``complete_json`` returns validated JSON (Ollama's ``format=`` with the schema; for local
models a strict parse with small repairs and one retry). Local models load on first use.

What else a backend can do (apply a LoRA adapter, be fine-tuned, be exported to Ollama) is
declared on ``Generator`` with the answer of a backend that cannot, so callers ask the
backend instead of probing it or inspecting its provider.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from kbloop.errors import ConfigError, KbloopError
from kbloop.models import cancel
from kbloop.models.jsonout import JsonOutputError, parse_json, schema_instructions
from kbloop.models.ollama import client_kwargs, ollama_errors
from kbloop.models.packaged import PackagedGGUF, converted_dir, gguf_file
from kbloop.models.registry import ModelSpec, register

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
YES_NO = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"]}


class Generator(ABC):
    """A backend of the generator, teacher or judge role."""

    spec: str
    """``provider:name``, as configured: names the model in answers, reports and caches."""
    supports_adapters: bool = False
    """Whether ``use_adapter`` can apply a PEFT LoRA adapter."""
    adapter: Path | None = None
    """The LoRA adapter folder applied now; None answers with the base model."""

    def __init__(self, spec: ModelSpec):
        self.spec = str(spec)

    def use_adapter(self, adapter: Path | None) -> None:
        """Answer with ``adapter`` (or the base model, for None) from the next request on."""
        if adapter is not None:
            raise KbloopError(f"{self.spec} cannot apply a LoRA adapter: use a local: or hf: model")

    def prepare_adapter(self, adapter: Path) -> Path | None:
        """Make a freshly trained adapter ready for this engine (llama.cpp converts it to GGUF);
        the file written, or None when the adapter is used as it is."""
        return None

    def base_model_dir(self) -> Path | None:
        """The Hugging Face folder that fine-tuning trains on and ``export merged`` merges into;
        None for a model kbloop cannot fine-tune (one served by Ollama)."""
        return None

    def ollama_base(self) -> Path | None:
        """What an Ollama Modelfile's FROM names under this model's adapters; None when Ollama
        cannot take them."""
        return None

    @abstractmethod
    def stream(self, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
               stop: list[str] | None = None, stats: dict | None = None) -> Iterator[str]:
        """Yield the reply to ``messages`` piece by piece, ending early at any ``stop`` string.
        ``stats`` receives token counts."""

    def generate(self, messages: Messages, **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    def _json_reply(self, messages: Messages, schema: dict, max_new_tokens: int) -> str:
        return self.generate(messages, max_new_tokens=max_new_tokens, temperature=0.0)

    def yes_probability(self, messages: Messages) -> float:
        """How sure the model is that the answer to ``messages`` (a yes/no question) is yes: 1.0
        or 0.0 from its JSON verdict here; an engine that reads the model's probabilities
        (llama.cpp) gives the probability itself. Raises JsonOutputError or BackendUnavailable."""
        reply = self.complete_json(messages[-1]["content"], YES_NO, max_new_tokens=16,
                                   system=next((m["content"] for m in messages if m["role"] == "system"), None))
        return 1.0 if reply["answer"] == "yes" else 0.0

    def continuation_probability(self, messages: Messages, prefix: str, continuation: str) -> float | None:
        """The probability that the model, replying to ``messages`` and having written ``prefix``,
        writes ``continuation`` next: the product of its tokens' probabilities. None from an
        engine that reads no probabilities (Ollama)."""
        return None

    def complete_json(self, prompt: str, schema: dict, *, system: str | None = None,
                      max_new_tokens: int = 512) -> Any:
        """Validated JSON for ``prompt``; one retry that names the problem, then JsonOutputError."""
        messages: Messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": f"{prompt}\n\n{schema_instructions(schema)}"})
        reply = self._json_reply(messages, schema, max_new_tokens)
        try:
            return parse_json(reply, schema)
        except JsonOutputError as first:
            messages += [
                {"role": "assistant", "content": reply},
                # Said as a problem with the JSON only: a judge told "not usable" alone went on
                # to grade the answer it was judging as unusable.
                {"role": "user", "content": f"Your JSON could not be read: {first}. Reply to my previous "
                                            f"request again. {schema_instructions(schema)}"},
            ]
            retry = self._json_reply(messages, schema, max_new_tokens)
            try:
                return parse_json(retry, schema)
            except JsonOutputError as second:
                snippet = " ".join(retry.split())[:120]
                raise JsonOutputError(
                    f"{self.spec} gave no valid JSON after a retry: {second} (reply began: {snippet!r})"
                ) from None


class TransformersGenerator(Generator):
    """A causal LM folder run with transformers on CPU, greedy unless told otherwise.

    The folder (``base_model_dir``) is read on first use, so constructing is free; ``adapter``
    is a PEFT LoRA folder applied on load.
    """

    supports_adapters = True

    def __init__(self, spec: ModelSpec, threads: int = 0):
        super().__init__(spec)
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @abstractmethod
    def base_model_dir(self) -> Path:
        """The model folder, found (or converted) when first asked for."""

    def load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            if self.threads:
                torch.set_num_threads(self.threads)
            folder = self.base_model_dir()
            self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
            self._model = with_adapter(model, self.adapter).eval()
        return self._model, self._tokenizer

    def use_adapter(self, adapter: Path | None) -> None:
        """Answer with another adapter (or none) from the next question on. A loaded model keeps
        its base weights: only the LoRA layers are taken out and the new ones put in."""
        adapter = Path(adapter) if adapter is not None else None
        with self._lock:
            if adapter == (Path(self.adapter) if self.adapter is not None else None):
                return
            if self._model is not None:
                base = self._model.unload() if self.adapter is not None else self._model
                self._model = with_adapter(base, adapter).eval()
            self.adapter = adapter

    def continuation_probability(self, messages: Messages, prefix: str, continuation: str) -> float:
        import torch

        model, tokenizer = self.load()
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        head, tail = split_tokens(lambda text: tokenizer.encode(text, add_special_tokens=False), prefix, continuation)
        ids = tokenizer.encode(prompt, add_special_tokens=False) + head + tail
        cancel.check()
        with self._lock, torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, len(ids) - len(tail) - 1:-1]
        chosen = torch.softmax(logits.float(), -1)[torch.arange(len(tail)), torch.tensor(tail)]
        return float(chosen.prod())

    def stream(self, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
               stop: list[str] | None = None, stats: dict | None = None) -> Iterator[str]:
        from transformers import (LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
                                  TextIteratorStreamer)

        model, tokenizer = self.load()
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        request = cancel.current()  # decoding runs on a worker thread, which does not carry the mark
        cancel.check(request)

        prompt_length = inputs["input_ids"].shape[1]

        class Cancel(StoppingCriteria):
            """Stops when the reader went away, or when greedy decoding starts to loop."""

            def __call__(self, input_ids, scores, **kwargs):
                gone = request is not None and request.is_set()
                return cancelled.is_set() or gone or is_looping(input_ids[0, prompt_length:].tolist())

        chosen: list[tuple[int, float]] = []

        class Chosen(LogitsProcessor):
            """Records the token greedy decoding picks at each step and its probability."""

            def __call__(self, input_ids, scores):
                import torch

                probability, token = torch.softmax(scores[0].float(), -1).max(-1)
                chosen.append((int(token), float(probability)))
                return scores

        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        kwargs = dict(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=max_new_tokens,
            streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancel()]),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling,
        )
        if stats is not None and temperature <= 0:
            kwargs["logits_processor"] = LogitsProcessorList([Chosen()])
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=tokenizer)
        failure: list[BaseException] = []
        result: list[Any] = []

        def run() -> None:
            import torch

            try:
                with torch.inference_mode():
                    result.append(model.generate(**kwargs))
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    cancel.check(request)
                    yield piece
                cancel.check(request)  # decoding may have stopped for it between two pieces
            finally:
                cancelled.set()
                worker.join()
                # Also when the reader stopped early: the counts are of what was generated.
                if stats is not None and result:
                    generated = result[0][0, prompt_length:].tolist()
                    stats["prompt_tokens"] = int(prompt_length)
                    stats["completion_tokens"] = len(generated)
                    stats["token_probabilities"] = token_probabilities(tokenizer, generated, chosen)
        if failure:
            raise failure[0]


def split_tokens(tokenize: Callable[[str], list[int]], prefix: str, continuation: str) -> tuple[list[int], list[int]]:
    """The tokens of ``prefix + continuation`` split where the prefix's own tokens end: a token
    that spans the boundary (" 6" of "is 6700") counts as the continuation's."""
    whole, head = tokenize(prefix + continuation), tokenize(prefix) if prefix else []
    shared = 0
    while shared < min(len(whole), len(head)) and whole[shared] == head[shared]:
        shared += 1
    return whole[:shared], whole[shared:]


def token_probabilities(tokenizer: Any, generated: list[int],
                        chosen: list[tuple[int, float]]) -> list[tuple[int, int, float]]:
    """(offset, length, probability) of each generated token that decodes to text of its own,
    offsets in the decoded reply; ``chosen`` is the greedy choice and its probability at each
    step. Tokens are placed in the reply by decoding the reply up to them."""
    found = []
    position = 0
    for step, (token, (pick, probability)) in enumerate(zip(generated, chosen)):
        end = len(tokenizer.decode(generated[:step + 1], skip_special_tokens=True))
        if token == pick and end > position:
            found.append((position, end - position, probability))
        position = max(position, end)
    return found


def with_adapter(model: Any, adapter: Path | None) -> Any:
    """The model with a PEFT LoRA folder applied, or the model itself when there is none."""
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter)


LOOP_WINDOW = 16


def is_looping(generated: list[int], window: int = LOOP_WINDOW) -> bool:
    """The last ``window`` tokens already occurred earlier in the reply: a greedy loop."""
    if len(generated) < 2 * window:
        return False
    tail = generated[-window:]
    return any(generated[i:i + window] == tail for i in range(len(generated) - 2 * window + 1))


class PackagedGenerator(TransformersGenerator):
    """A model packaged as GGUF (``local:``): transformers reads a folder converted from it once
    into the model cache; Ollama takes the GGUF itself."""

    def __init__(self, spec: ModelSpec, preset: PackagedGGUF, cache_dir: Path, threads: int = 0):
        super().__init__(spec, threads)
        self.preset, self.cache_dir = preset, cache_dir

    def base_model_dir(self) -> Path:
        return converted_dir(self.preset, self.cache_dir)

    def ollama_base(self) -> Path:
        return gguf_file(self.preset, self.cache_dir)


class FolderGenerator(TransformersGenerator):
    """A Hugging Face model folder on disk (``hf:``); Ollama's FROM takes the folder too."""

    def __init__(self, spec: ModelSpec, folder: Path, threads: int = 0):
        super().__init__(spec, threads)
        self.folder = folder

    def base_model_dir(self) -> Path:
        return self.folder

    def ollama_base(self) -> Path:
        return self.folder


def _hf(spec: ModelSpec, settings: Any) -> Generator:
    folder = Path(spec.name).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{spec}: not a Hugging Face model folder (no config.json)")
    return FolderGenerator(spec, folder, settings.torch_threads)


class OllamaGenerator(Generator):
    """A chat model on an Ollama server, through langchain-ollama's ChatOllama."""

    def __init__(self, spec: ModelSpec, settings: Any):
        super().__init__(spec)
        self.model, self.url, self.settings = spec.name, settings.ollama_url, settings

    def _chat(self, temperature: float, max_new_tokens: int, schema: dict | None = None,
              stop: list[str] | None = None) -> Any:
        from langchain_ollama import ChatOllama

        from kbloop.models.ollama import sync_client_kwargs

        return ChatOllama(model=self.model, base_url=self.url, temperature=temperature, num_predict=max_new_tokens,
                          format=schema, stop=stop, client_kwargs=client_kwargs(self.settings),
                          sync_client_kwargs=sync_client_kwargs(self.settings))

    def stream(self, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
               stop: list[str] | None = None, stats: dict | None = None) -> Iterator[str]:
        chat = self._chat(temperature, max_new_tokens, stop=stop)
        with ollama_errors(self.url, self.model):
            for chunk in chat.stream([(m["role"], m["content"]) for m in messages]):
                cancel.check()
                usage = getattr(chunk, "usage_metadata", None)
                if usage and stats is not None:
                    stats["prompt_tokens"] = usage.get("input_tokens")
                    stats["completion_tokens"] = usage.get("output_tokens")
                if chunk.content:
                    yield chunk.content

    def _json_reply(self, messages: Messages, schema: dict, max_new_tokens: int) -> str:
        chat = self._chat(0.0, max_new_tokens, schema=schema)
        cancel.check()
        with ollama_errors(self.url, self.model):
            return chat.invoke([(m["role"], m["content"]) for m in messages]).content


def _ollama(spec: ModelSpec, settings: Any) -> Generator:
    return OllamaGenerator(spec, settings)


for _role in ("generator", "teacher", "judge"):
    register(_role, "hf")(_hf)
    register(_role, "ollama")(_ollama)
