"""The llama.cpp engine on a real packaged model: streaming, stop strings, token counts,
grammar-constrained JSON, and LoRA adapters converted to GGUF and switched in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kbloop import models
from kbloop.config import Settings
from kbloop.errors import BackendUnavailable
from kbloop.models import llamacpp, local
from kbloop.models.generators import PackagedGenerator, split_tokens
from kbloop.models.llamacpp import LlamaCppGenerator, Utf8Stream
from kbloop.models.lora_gguf import GGUF_NAME, AdapterConversionError, BaseArchitecture, ensure_gguf

QUESTION = [{"role": "user", "content": "Name three uses of a version control system."}]
VERDICT = {
    "type": "object",
    "properties": {"correctness": {"type": "integer", "minimum": 1, "maximum": 5},
                   "reason": {"type": "string", "minLength": 1}},
    "required": ["correctness", "reason"],
}


@pytest.fixture(scope="module")
def engine(model_cache) -> LlamaCppGenerator:
    gen = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    assert isinstance(gen, LlamaCppGenerator)
    return gen


def test_the_engine_setting_chooses_the_engine(model_cache):
    settings = Settings(model_cache=str(model_cache))
    assert isinstance(models.create("judge", "local:qwen2.5-1.5b", settings), LlamaCppGenerator)
    slow = models.create("judge", "local:qwen2.5-1.5b", settings.model_copy(update={"engine": "transformers"}))
    assert isinstance(slow, PackagedGenerator)


def test_without_llama_cpp_local_models_fall_back_to_transformers(model_cache, monkeypatch, caplog):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    local.llamacpp_loads.cache_clear()
    try:
        gen = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    finally:
        local.llamacpp_loads.cache_clear()
    assert isinstance(gen, PackagedGenerator)
    assert "transformers engine" in caplog.text


def test_requirements_build_llama_cpp_without_amx_kernels():
    # llama.cpp's AMX matrix kernels crash on the first prompt on some CPUs that have AMX, so
    # requirements.txt compiles them out; -march=native alone would build them in.
    import llama_cpp

    assert not llamacpp.has_amx_kernels(llama_cpp), llama_cpp.llama_print_system_info().decode()


def test_a_build_with_amx_kernels_loads_models_without_repacked_weights(model_cache, monkeypatch, caplog):
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: (info + "AMX_INT8 = 1 | ").encode())
    gen = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    try:
        assert gen.load().model_params.use_extra_bufts is False
        assert gen.generate(QUESTION, max_new_tokens=8).strip()
    finally:
        gen.close()
    assert "AMX kernels" in caplog.text and "rebuild it with" in caplog.text
    # Only that load was changed: llama.cpp's defaults are back for every other.
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


def test_fast_weights_are_a_quantisation_made_once_and_packaged_runs_the_file_as_shipped(model_cache):
    settings = Settings(model_cache=str(model_cache), llamacpp_weights="fast")
    fast = models.create("generator", "local:qwen2.5-0.5b", settings)
    path = fast.model_file()
    assert path.name.endswith(".q4_0.gguf") and path.parent == model_cache / "gguf"
    made = path.stat().st_mtime_ns
    assert models.create("generator", "local:qwen2.5-0.5b", settings).model_file().stat().st_mtime_ns == made
    assert fast.load().metadata["general.file_type"] == "2"  # llama.cpp's Q4_0
    assert "Paris" in fast.generate([{"role": "user", "content": "What is the capital of France?"}],
                                    max_new_tokens=12)
    fast.close()
    shipped = models.create("generator", "local:qwen2.5-0.5b", Settings(model_cache=str(model_cache)))
    assert shipped.model_file() == model_cache / "gguf" / "qwen2.5-0.5b.gguf"  # the default
    # A model with no faster form runs its packaged file either way.
    assert models.create("generator", "local:smollm2-135m", settings).model_file().name.endswith("Q4_1.gguf")


def test_a_file_llama_cpp_cannot_quantise_is_a_one_line_error_and_leaves_nothing(tmp_path):
    source = tmp_path / "broken.gguf"
    source.write_bytes(b"GGUF but not really")
    with pytest.raises(BackendUnavailable, match=r"could not re-quantise .*broken.gguf to q4_0"):
        llamacpp.requantize(source, tmp_path / "broken.q4_0.gguf", "q4_0")
    assert not list(tmp_path.glob("broken.q4_0.gguf*")) and not list(tmp_path.glob("*.part"))


def test_it_streams_counts_tokens_and_stops_at_the_limit(engine):
    stats: dict = {}
    pieces = list(engine.stream(QUESTION, max_new_tokens=24, stats=stats))
    assert len(pieces) > 3 and "".join(pieces).strip()
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (len(engine.prompt_tokens(QUESTION)), 24)


@pytest.mark.parametrize("kind", ["llamacpp", pytest.param("transformers", marks=pytest.mark.slow)])
def test_it_records_how_sure_the_model_was_of_each_token_it_wrote(engine, model_cache, kind):
    if kind == "transformers":
        engine = models.create("generator", "local:smollm2-135m",
                               Settings(model_cache=str(model_cache), engine="transformers"))
    stats: dict = {}
    count = [{"role": "user", "content": "Count from 1 to 12, separated by commas."}]
    text = "".join(engine.stream(count, max_new_tokens=40, stats=stats))
    tokens = stats["token_probabilities"]
    # the tokens tile the reply: each starts where the one before it ended
    assert tokens and tokens[0][0] == 0 and sum(length for _, length, _ in tokens) == len(text)
    assert all(a[0] + a[1] == b[0] for a, b in zip(tokens, tokens[1:]))
    assert all(0.0 < probability <= 1.0 for _, _, probability in tokens)
    # the count's numbers, which the question names, are written with confidence
    numbers = [p for offset, length, p in tokens if text[offset:offset + length].strip() in ("1", "12")]
    assert numbers and max(numbers) > 0.5


@pytest.mark.parametrize("kind", ["llamacpp", pytest.param("transformers", marks=pytest.mark.slow)])
def test_the_probability_of_what_follows_a_started_reply_is_read_from_the_model(engine, model_cache, kind):
    if kind == "transformers":
        engine = models.create("generator", "local:smollm2-135m",
                               Settings(model_cache=str(model_cache), engine="transformers"))
    count = [{"role": "user", "content": "Count from 1 to 12, separated by commas."}]
    five, nine = (engine.continuation_probability(count, "1, 2, 3, 4, ", value) for value in ("5", "9"))
    assert five > 0.5 and nine < 0.05
    # one more token can only make it less likely, and the same question gets the same answer
    assert engine.continuation_probability(count, "1, 2, 3, 4, ", "5, 6") <= five
    assert engine.continuation_probability(count, "1, 2, 3, 4, ", "5") == pytest.approx(five)


def test_a_token_that_spans_the_end_of_the_prefix_belongs_to_the_continuation():
    vocabulary: dict[str, int] = {}

    def tokenize(text: str) -> list[int]:
        return [vocabulary.setdefault(piece, len(vocabulary)) for piece in re.findall(r" ?\w+|\s|\S", text)]

    head, tail = split_tokens(tokenize, "It is ", "6700.")
    assert [head, tail] == [tokenize("It is"), tokenize(" 6700.")]
    assert split_tokens(tokenize, "", "50") == ([], tokenize("50"))


def test_the_probability_of_a_yes_is_read_from_the_model(engine):
    ask = [{"role": "user", "content": "Is Paris the capital of France? Reply Yes or No."}]
    probability = engine.yes_probability(ask)
    assert 0.0 < probability < 1.0 and engine.yes_probability(ask) == probability


def test_a_reply_does_not_depend_on_the_request_before_it(engine):
    # Reusing the key/value cache of the prompt before reads this one in other batches, and
    # logits that differ in the last bits flip a greedy near-tie: every prompt is read whole.
    def probabilities(before: list | None) -> list:
        engine._replies.clear()
        if before is None:
            engine.load().reset()
        else:
            engine.generate(before, max_new_tokens=4)
        stats: dict = {}
        engine.generate(QUESTION, max_new_tokens=24, stats=stats)
        return stats["token_probabilities"]

    fresh = probabilities(None)
    assert len(fresh) > 10
    assert probabilities(QUESTION) == fresh  # the same prompt again: once, its last token alone was replayed
    assert probabilities([{"role": "user", "content": "Name a colour."}]) == fresh  # a shared template prefix


def test_a_greedy_reply_asked_again_is_replayed_and_honours_stop_strings(engine, monkeypatch):
    engine._replies.clear()
    stats: dict = {}
    full = engine.generate(QUESTION, max_new_tokens=40, stats=stats)
    monkeypatch.setattr(engine.load(), "generate", lambda *a, **k: pytest.fail("decoded again"))
    again: dict = {}
    assert engine.generate(QUESTION, max_new_tokens=40, stats=again) == full and again == stats
    monkeypatch.undo()
    word = next(w for w in full.split()[3:] if len(w) > 3)
    assert engine.generate(QUESTION, max_new_tokens=40, stop=[word]) == full[:full.index(word)]
    # A reply left half read is not kept as if it were whole.
    engine._replies.clear()
    next(iter(engine.stream(QUESTION, max_new_tokens=40)))
    assert engine.generate(QUESTION, max_new_tokens=40) == full


def test_a_character_split_over_two_tokens_comes_out_whole():
    stream = Utf8Stream()
    data = "naïve €".encode()
    assert stream.push(data[:3]) == "na" and stream.push(data[3:-1]) == "ïve " and stream.push(data[-1:]) == "€"


def test_json_replies_follow_the_schema_by_grammar(engine):
    messages = [{"role": "user", "content": "Grade the answer 'git tracks changes' to 'what does git do?'. "
                                            "Reply as JSON."}]
    for _ in range(3):
        raw = engine._json_reply(messages, VERDICT, 80)
        verdict = json.loads(raw)  # no repair needed: the grammar allowed nothing else
        assert 1 <= verdict["correctness"] <= 5 and verdict["reason"]
    assert set(engine.complete_json("Is git a version control system?", VERDICT, max_new_tokens=80)) == {
        "correctness", "reason"}


# -- adapters --------------------------------------------------------------------------------------

def make_adapter(base_dir: Path, out: Path, seed: int, scale: float = 0.15) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # before peft draws the A matrices, so the adapter is the same every run
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    peft_model.save_pretrained(out)
    return out


def peft_reply(base_dir: Path, adapter: Path, messages, tokens: int) -> list[int]:
    """The tokens peft's greedy reply is made of (fp32 weights, the same vocabulary as the GGUF)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def agreement(engine: LlamaCppGenerator, messages, reply: list[int]) -> float:
    """How often llama.cpp's most likely next token is the reply's own, fed the reply so far
    (teacher forcing): one early near-tie cannot make the rest of the comparison diverge."""
    import numpy as np

    with engine._lock:
        llm = engine.load()
        llm.reset()
        llm.eval(engine.prompt_tokens(messages))
        hits = 0
        for token in reply:
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            hits += int(np.argmax(logits)) == token
            llm.eval([token])
        llm.reset()
    return hits / len(reply)


@pytest.fixture(scope="module")
def adapters(engine, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    base = engine.base_model_dir()
    return make_adapter(base, folder / "v1", seed=1), make_adapter(base, folder / "v2", seed=2)


@pytest.mark.slow
def test_an_adapter_is_converted_applied_swapped_and_rolled_back(engine, adapters):
    first, second = adapters
    base_reply = engine.generate(QUESTION, max_new_tokens=16)
    engine.use_adapter(first)
    assert (first / GGUF_NAME).is_file()  # converted once, beside the safetensors
    with_first = engine.generate(QUESTION, max_new_tokens=16)
    engine.use_adapter(second)
    with_second = engine.generate(QUESTION, max_new_tokens=16)
    engine.use_adapter(first)
    assert engine.generate(QUESTION, max_new_tokens=16) == with_first
    engine.use_adapter(None)
    assert engine.generate(QUESTION, max_new_tokens=16) == base_reply  # rollback restores the base exactly
    assert len({base_reply, with_first, with_second}) == 3
    # The converted adapter changes the model as peft's does (fp32 weights): llama.cpp with it
    # predicts peft's reply token by token; without it, it does not. (Greedy replies themselves
    # may part at a near-tie, where quantised arithmetic differs between CPUs.)
    expected = peft_reply(engine.base_model_dir(), first, QUESTION, 24)
    engine.use_adapter(first)
    adapted = agreement(engine, QUESTION, expected)
    engine.use_adapter(None)
    base = agreement(engine, QUESTION, expected)
    assert adapted >= 0.85 and adapted - base >= 0.2, (adapted, base)


@pytest.mark.slow
def test_an_adapter_set_before_loading_applies_at_load(model_cache, adapters):
    first, _ = adapters
    fresh = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    warm = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    fresh.use_adapter(first)
    warm.load()
    warm.use_adapter(first)
    assert fresh.generate(QUESTION, max_new_tokens=12) == warm.generate(QUESTION, max_new_tokens=12)
    fresh.close()
    warm.close()


def test_a_dora_adapter_is_refused_in_one_line(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True,
                                                              "lora_alpha": 16}))
    with pytest.raises(AdapterConversionError, match="plain LoRA only"):
        ensure_gguf(tmp_path, BaseArchitecture("llama", 2, 4, 2))
    assert not (tmp_path / GGUF_NAME).exists()
