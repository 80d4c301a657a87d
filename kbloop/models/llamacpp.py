"""The llama.cpp engine: packaged GGUF models run as they are, through llama-cpp-python.

It reads the quantised file directly (no fp32 copy), decodes two to three times faster than
transformers on the same CPU, reads every prompt whole from an empty key/value cache (a reply
never depends on the request before it), remembers its last greedy replies, and constrains
JSON replies with a grammar built from the schema, so the judge and the teacher cannot return
malformed JSON. LoRA adapters are converted once to GGUF
(``lora_gguf``) and switched in place on the loaded model: promoting or rolling back an
adapter costs milliseconds, not a reload.

The prompt is the model's own chat template (from the GGUF metadata), rendered and tokenised
here rather than in llama-cpp-python's chat API, so that the engine sees token ids: it stops
on the loop guard, honours stop strings across token boundaries and counts tokens exactly.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from kbloop.errors import BackendUnavailable
from kbloop.fsutil import exclusive
from kbloop.models import cancel
from kbloop.models.generators import Generator, Messages, is_looping, split_tokens
from kbloop.models.lora_gguf import BaseArchitecture, ensure_gguf
from kbloop.models.registry import ModelSpec
from kbloop.text import StopFilter

log = logging.getLogger(__name__)

YES, NO = ("Yes", "yes", " Yes"), ("No", "no", " No")
CONTEXT_TOKENS = 8192
"""Context window allocated per model: a question, four sources and a long answer fit with room."""
REPLIES_KEPT = 64
"""Greedy replies remembered, so that a question asked again is answered at once."""


def available() -> bool:
    """Whether llama-cpp-python is installed and its library loads."""
    try:
        _import()
    except (ImportError, OSError):
        return False
    return True


def _import() -> Any:
    # OMP_WAIT_POLICY=PASSIVE is already set (kbloop._offline), before OpenMP starts.
    import llama_cpp

    return llama_cpp


def has_amx_kernels(llama_cpp: Any) -> bool:
    """Whether this llama-cpp-python build runs matrix products with Intel AMX. Those kernels
    crash with a segmentation fault on the first prompt on some Sapphire Rapids machines and
    virtual machines (llama.cpp issue 20824, not fixed), so requirements.txt builds without
    them; a build made otherwise (an earlier cached wheel, a user's own) is caught here."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


REBUILD = "pip cache remove llama_cpp_python && pip uninstall -y llama-cpp-python && pip install -r requirements.txt"
"""How to replace the installed llama-cpp-python with a build of requirements.txt's flags for this
CPU: pip's wheel cache ignores build flags, so the cached wheel goes first."""

_PARAMS = threading.Lock()


@contextmanager
def _without_weight_repacking(llama_cpp: Any) -> Iterator[None]:
    """Models loaded inside keep their weights in plain CPU buffers: llama.cpp's extra buffer
    types (AMX, and the AVX2 repacking that comes with them) are off. ``llama_cpp.Llama`` takes
    no such argument, so its default model parameters are swapped for the duration."""
    module = llama_cpp.llama_cpp
    default = module.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    with _PARAMS:
        module.llama_model_default_params = params
        try:
            yield
        finally:
            module.llama_model_default_params = default


def requantize(source: Path, target: Path, kind: str) -> Path:
    """``source`` re-quantised to ``kind`` ("q4_0": llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_0) by
    llama.cpp's own quantiser, written to ``target`` whole or not at all; done once, and a file
    already there is used as it is."""
    if target.is_file():
        return target
    llama_cpp = _import()
    with exclusive(target.with_suffix(".lock"), f"re-quantisation of {source.name}", wait=True):
        if target.is_file():
            return target
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}"), True
        tmp = target.with_suffix(".part")
        with _quiet_llama(), _silenced_stderr():
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise BackendUnavailable(f"llama.cpp could not re-quantise {source} to {kind} (status {status})")
        os.replace(tmp, target)
    return target


@contextmanager
def _silenced_stderr() -> Iterator[None]:
    """The quantiser prints a line per tensor on the C stderr; a user sees none of them."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def physical_cores() -> int:
    """Cores this process may use, counting hyper-threads once: llama.cpp is slower with both."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


class Utf8Stream:
    """Bytes of detokenised pieces in, complete UTF-8 text out: a character split over two
    tokens is held back until its last byte arrives."""

    def __init__(self) -> None:
        self._pending = b""

    def push(self, piece: bytes) -> str:
        data = self._pending + piece
        for cut in range(len(data), max(len(data) - 4, -1), -1):
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = data[cut:]
            return text
        self._pending = b""
        return data.decode("utf-8", errors="replace")

    def flush(self) -> str:
        rest, self._pending = self._pending, b""
        return rest.decode("utf-8", errors="replace")


@contextmanager
def _quiet_llama() -> Iterator[None]:
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _free(llm: Any, adapters: dict[Path, Any]) -> None:
    llama_cpp = _import()
    llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
    for handle in adapters.values():
        llama_cpp.llama_adapter_lora_free(handle)
    adapters.clear()
    llm.close()


def _copied(stats: dict) -> dict:
    """A reply's statistics with a list of probabilities of their own, so that neither a caller
    nor the kept reply changes the other's."""
    return {**stats, "token_probabilities": list(stats["token_probabilities"])}


class LlamaCppGenerator(Generator):
    """A GGUF model run by llama.cpp; ``gguf`` finds the file on first use. ``base_model_dir``
    (the transformers folder that fine-tuning trains on) and ``ollama_base`` come from the
    caller, since they depend on where the GGUF came from."""

    supports_adapters = True

    def __init__(self, spec: ModelSpec, gguf: Callable[[], Path], *, threads: int = 0,
                 base_model_dir: Callable[[], Path] | None = None,
                 ollama_base: Callable[[], Path] | None = None, repack: bool = True):
        super().__init__(spec)
        self._gguf, self._base_model_dir, self._ollama_base = gguf, base_model_dir, ollama_base
        self.repack = repack  # False: llama.cpp's extra buffer types off (``kbloop.models.selfcheck``)
        self.threads = threads or physical_cores()
        self._llm: Any = None
        self._finalizer: Any = None
        self._template: Any = None
        self._loaded_adapters: dict[Path, Any] = {}
        self._active: Path | None = None
        self._grammars: dict[str, Any] = {}
        self._replies: OrderedDict[tuple, tuple[list[str], dict]] = OrderedDict()
        self._lock = threading.RLock()

    def model_file(self) -> Path:
        """The GGUF file llama.cpp runs."""
        return self._gguf()

    def base_model_dir(self) -> Path | None:
        return self._base_model_dir() if self._base_model_dir else None

    def ollama_base(self) -> Path | None:
        return self._ollama_base() if self._ollama_base else None

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> Any:
        with self._lock:
            if self._llm is None:
                llama_cpp = _import()
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                path = self.model_file()
                amx = has_amx_kernels(llama_cpp)
                if amx:
                    log.warning("this llama-cpp-python build has AMX kernels, which crash on some CPUs: "
                                "loading %s without repacking its weights; rebuild it with: %s", path.name, REBUILD)
                try:
                    with _without_weight_repacking(llama_cpp) if amx or not self.repack else nullcontext():
                        llm = llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_threads=self.threads,
                                              n_threads_batch=self.threads, verbose=False)
                except (ValueError, RuntimeError) as exc:
                    raise BackendUnavailable(f"llama.cpp could not load {path}: {exc}") from None
                template = llm.metadata.get("tokenizer.chat_template")
                if not template:
                    raise BackendUnavailable(f"{path} has no chat template in its metadata")
                eos, bos = llm.token_eos(), llm.token_bos()
                self._template = Jinja2ChatFormatter(
                    template,
                    eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
                    bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
                )
                self._llm = llm
                # Freed at exit too, before interpreter teardown (llama-cpp-python's own
                # destructor fails once its modules are gone).
                self._finalizer = weakref.finalize(self, _free, llm, self._loaded_adapters)
                if self.adapter is not None:
                    self._apply(self.adapter)
            return self._llm

    def architecture(self) -> BaseArchitecture:
        return BaseArchitecture.from_metadata(self.load().metadata)

    def prompt_tokens(self, messages: Messages) -> list[int]:
        """The chat template applied to ``messages`` and tokenised, ready for the model's reply."""
        llm = self.load()
        prompt = self._template(messages=messages).prompt
        return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    # -- adapters --------------------------------------------------------------------------

    def prepare_adapter(self, adapter: Path) -> Path:
        """Write the adapter's GGUF LoRA now (after training), so first use does not wait for it.
        The training folder's config says what the model's metadata would, without loading it."""
        base = self.base_model_dir()
        config = base / "config.json" if base is not None else None
        if config is not None and config.is_file():
            return ensure_gguf(adapter, BaseArchitecture.from_hf_config(json.loads(config.read_text())))
        return ensure_gguf(adapter, self.architecture())

    def use_adapter(self, adapter: Path | None) -> None:
        """Answer with another adapter (or none) from the next request on; the base weights stay
        loaded and only the adapter list of the context changes."""
        adapter = Path(adapter) if adapter is not None else None
        with self._lock:
            if self._llm is not None:
                self._apply(adapter)
            self.adapter = adapter

    def _apply(self, adapter: Path | None) -> None:
        llama_cpp = _import()
        llm = self._llm
        if adapter == self._active:
            return
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        else:
            handle = self._loaded_adapters.get(adapter)
            if handle is None:
                path = ensure_gguf(adapter, BaseArchitecture.from_metadata(llm.metadata))
                # It notes each tensor that stays unpacked, at a level llama-cpp-python always prints.
                with _quiet_llama():
                    handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode("utf-8"))
                if not handle:
                    raise BackendUnavailable(f"llama.cpp could not load the adapter {path}")
                self._loaded_adapters[adapter] = handle
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            status = llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        if status:
            raise BackendUnavailable(f"llama.cpp could not switch to adapter {adapter} (status {status})")
        # The cached key/values were computed with the old weights.
        llm.reset()
        self._active = adapter

    def close(self) -> None:
        """Free the model and its adapters now (otherwise at exit, or when garbage-collected)."""
        with self._lock:
            if self._llm is not None:
                self._finalizer()
                self._llm, self._active = None, None

    # -- generation ------------------------------------------------------------------------

    def stream(self, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
               stop: list[str] | None = None, stats: dict | None = None) -> Iterator[str]:
        yield from self._stream(messages, max_new_tokens, temperature, stop, stats, grammar=None)

    def _stream(self, messages: Messages, max_new_tokens: int, temperature: float, stop: list[str] | None,
                stats: dict | None, grammar: Any) -> Iterator[str]:
        with self._lock:
            tokens = self.prompt_tokens(messages)
            # A greedy reply is a function of the prompt and the weights: asked again, it is
            # replayed. (A grammar's state lives in its object, so constrained replies are not kept.)
            greedy = temperature <= 0 and grammar is None
            key = (tuple(tokens), max_new_tokens, tuple(stop or ()), self._active) if greedy else None
            if key in self._replies:
                self._replies.move_to_end(key)
                pieces, recorded = self._replies[key]
                if stats is not None:
                    stats.update(_copied(recorded))
                yield from pieces
                return
            pieces: list[str] = []
            recorded: dict = {}
            try:
                for piece in self._decode(tokens, max_new_tokens, temperature, stop, grammar, recorded,
                                          with_probabilities=stats is not None or key is not None):
                    pieces.append(piece)
                    yield piece
            finally:
                if stats is not None:
                    stats.update(recorded)
            if key is not None:  # only a reply read to its end
                self._replies[key] = (pieces, _copied(recorded))
                while len(self._replies) > REPLIES_KEPT:
                    self._replies.popitem(last=False)

    def _decode(self, tokens: list[int], max_new_tokens: int, temperature: float, stop: list[str] | None,
                grammar: Any, stats: dict, with_probabilities: bool) -> Iterator[str]:
        llama_cpp = _import()
        llm = self.load()
        room = CONTEXT_TOKENS - len(tokens)
        if room < 1:
            raise BackendUnavailable(
                f"the prompt has {len(tokens)} tokens; {self.spec} holds {CONTEXT_TOKENS}: ask with fewer sources")
        generated: list[int] = []
        text, stops = Utf8Stream(), StopFilter(stop or [])
        sampling = {"temp": temperature} if temperature > 0 else {"temp": 0.0, "top_k": 1}
        probabilities: list[tuple[int, int, float]] = []
        position = 0
        try:
            cancel.check()
            # From an empty cache: reusing the prefix the last prompt left would evaluate this
            # one in other batches, and logits that differ in the last bits flip greedy near-ties.
            llm.reset()
            for token in llm.generate(tokens, reset=True, grammar=grammar, **sampling):
                cancel.check()
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    break
                generated.append(token)
                decoded = text.push(llm.detokenize([token]))
                if with_probabilities and decoded:
                    probabilities.append((position, len(decoded), self._probability(llm, token)))
                position += len(decoded)
                piece = stops.feed(decoded)
                if piece:
                    yield piece
                if stops.stopped or len(generated) >= min(max_new_tokens, room) or is_looping(generated):
                    break
            if not stops.stopped:
                rest = stops.feed(text.flush()) + stops.flush()
                if rest:
                    yield rest
        finally:
            stats["prompt_tokens"] = len(tokens)
            stats["completion_tokens"] = len(generated)
            stats["token_probabilities"] = probabilities

    @staticmethod
    def _last_logits(llm: Any) -> Any:
        """A copy of the logits of the last position evaluated (what the next token is sampled from)."""
        import numpy as np

        pointer = _import().llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()

    def _probability(self, llm: Any, token: int) -> float:
        """The probability the model gave ``token`` at the position it was just sampled for: a
        softmax over the vocabulary, in float32 shifted by the largest logit (nothing overflows)
        and summed in float64, about 0.15 ms for every token written."""
        import numpy as np

        logits = self._last_logits(llm)
        logits -= logits.max()
        return float(np.exp(logits[token]) / np.exp(logits).sum(dtype=np.float64))

    def _read(self, llm: Any, tokens: list[int], then: int = 0) -> None:
        """Evaluate ``tokens`` from an empty cache, leaving room for ``then`` more, so that the
        logits of their last position are the model's next-token distribution."""
        if len(tokens) + then >= CONTEXT_TOKENS:
            raise BackendUnavailable(f"the prompt has {len(tokens)} tokens; {self.spec} holds {CONTEXT_TOKENS}")
        cancel.check()
        llm.reset()
        llm.eval(tokens)

    def yes_probability(self, messages: Messages) -> float:
        """P(yes) / (P(yes) + P(no)) for the reply's first token: how sure the model is of a yes."""
        import numpy as np

        with self._lock:
            llm = self.load()
            self._read(llm, self.prompt_tokens(messages))
            logits = self._last_logits(llm)
            weights = np.exp(logits - logits.max())
            yes, no = (sum(weights[i] for i in self._first_tokens(llm, words)) for words in (YES, NO))
            return float(yes / (yes + no)) if yes + no > 0 else 0.5

    def continuation_probability(self, messages: Messages, prefix: str, continuation: str) -> float:
        with self._lock:
            llm = self.load()
            head, tail = split_tokens(lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
                                      prefix, continuation)
            self._read(llm, self.prompt_tokens(messages) + head, then=len(tail))
            probability = 1.0
            for token in tail:
                cancel.check()
                probability *= self._probability(llm, token)
                llm.eval([token])
            return probability

    @staticmethod
    def _first_tokens(llm: Any, words: tuple[str, ...]) -> set[int]:
        return {llm.tokenize(w.encode("utf-8"), add_bos=False, special=False)[0] for w in words}

    def _json_reply(self, messages: Messages, schema: dict, max_new_tokens: int) -> str:
        """A reply the schema's grammar allows: always JSON of the right shape."""
        return "".join(self._stream(messages, max_new_tokens, 0.0, None, None, grammar=self._grammar(schema)))

    def _grammar(self, schema: dict) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]
