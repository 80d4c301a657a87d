"""Inference benchmark: kbloop's llama.cpp engine against a plain llama-cpp-python loop, against
its own transformers engine, as a judge, and from the command line beside a running server.

All prompts are kbdev's real answer prompts: a question of ``qa_initial`` and the 4 chunks
kbloop retrieves for it, in kbloop's own message layout. Everything is greedy. Ratios are of
medians measured in this one run:

- ``decode_vs_llamacpp`` (per model): kbloop's generator decode tokens/s over a bare
  ``Llama.generate`` loop on the same GGUF file, the same prompt tokens and threads;
- ``decode_vs_transformers`` / ``ttft_vs_transformers``: kbloop's llama.cpp path over its
  transformers path (``KBLOOP_ENGINE=transformers``), same model and prompts; time to first
  token is from the call to the first piece of text;
- ``judge_vs_transformers``: median seconds per verdict of the judge prompt (the scores schema)
  through llama.cpp with its JSON grammar, over the same through transformers; ``judge_invalid_json``
  counts llama.cpp replies that did not parse strictly (before any retry or repair);
- ``cli_ask_vs_server``: wall time of ``kbloop ask`` in a new process while ``kbloop serve`` runs,
  over the server's own time to answer the same question over HTTP;
- ``serve_peak_rss_mib``: peak RSS (VmHWM) of ``kbloop serve`` after answering, per engine;
- ``weights_ttft_ratio`` / ``weights_decode_ratio``: the default generator on its fast weights
  (``KBLOOP_LLAMACPP_WEIGHTS=fast``, a Q4_0 re-quantisation) over its packaged file: time to
  first token (lower is better) and decode tokens/s, prompts alternated between the two;
- ``adapter_prefix_match`` (with ``--adapter``): share of prompts whose first 16 greedy tokens
  with the adapter are the same through llama.cpp as through transformers + peft.

Run from the repository root, on a quiet machine (nothing else heavy running):

    python bench/inference.py [--parts decode,transformers,weights,judge,cli,adapter] [--adapter DIR]
                              [--workdir DIR] [--json]

``--workdir`` keeps the ingested kbdev home between runs (an unchanged corpus re-ingests in
seconds). A full run takes about 30 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

from kbloop import models  # noqa: E402
from kbloop.config import Home, Settings  # noqa: E402
from kbloop.evaluate.judge import SCORE_PROMPT, SCORES_SCHEMA, SYSTEM  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402
from kbloop.models.jsonout import JsonOutputError, parse_json, schema_instructions  # noqa: E402
from kbloop.models.llamacpp import LlamaCppGenerator  # noqa: E402
from kbloop.prompt import build_messages  # noqa: E402
from workdir import corpus_home  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BENCH = REPO.parent / "shared" / "kbdev"
PARTS = ("decode", "transformers", "weights", "judge", "cli", "adapter")
DECODE_MODELS = ("local:qwen2.5-0.5b", "local:qwen2.5-1.5b")
ANSWER_MODEL = "local:qwen2.5-0.5b"
JUDGE_MODEL = "local:qwen2.5-1.5b"
NEW_TOKENS = 64
PREFIX_TOKENS = 16


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- the prompts -----------------------------------------------------------------------------

def kbdev_home(workdir: Path, bench: Path) -> Home:
    root = workdir / "home"
    home = Home(root) if (root / ".env").exists() else corpus_home(root, bench / "corpus" / "initial")
    with KnowledgeBase(home, home.load_settings()) as kb:
        started = time.perf_counter()
        kb.ingest()
        print(f"kbdev home {root}: ingested in {time.perf_counter() - started:.1f} s")
    return home


def prompts(home: Home, bench: Path, count: int) -> list[tuple[dict, list[dict], list[str]]]:
    """(item, answer messages, the 4 retrieved texts) for the first ``count`` qa_initial items."""
    items = [json.loads(line) for line in (bench / "qa_initial.jsonl").read_text().splitlines() if line.strip()]
    out = []
    with KnowledgeBase(home, home.load_settings()) as kb:
        for item in items[:count]:
            hits = kb.search(item["question"], 4)
            out.append((item, build_messages(item["question"], hits), [h.text for h in hits]))
    return out


# -- timing one reply --------------------------------------------------------------------------

def timed(pieces: Iterator[Any], count_tokens: Callable[[], int]) -> dict:
    """Time to first piece and decode tokens/s ((tokens - 1) / first-to-last piece)."""
    started = time.perf_counter()
    first = last = None
    for _ in pieces:
        last = time.perf_counter()
        first = first or last
    tokens = count_tokens()
    decode = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    return {"ttft_s": (first - started) if first else None, "decode_tps": decode, "tokens": tokens}


def kbloop_reply(generator: Any, messages: list[dict], new_tokens: int) -> dict:
    stats: dict = {}
    return timed(generator.stream(messages, max_new_tokens=new_tokens, stats=stats),
                 lambda: stats.get("completion_tokens") or 0)


def plain_reply(llm: Any, tokens: list[int], new_tokens: int) -> dict:
    """The ceiling: llama-cpp-python's own generate loop, nothing around it."""
    import llama_cpp

    produced: list[int] = []

    def pieces() -> Iterator[bytes]:
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                return
            produced.append(token)
            yield llm.detokenize([token])
            if len(produced) >= new_tokens:
                return

    return timed(pieces(), lambda: len(produced))


# -- the parts ---------------------------------------------------------------------------------

def part_decode(settings: Settings, cases: list, new_tokens: int) -> dict:
    import llama_cpp

    from kbloop.models.llamacpp import CONTEXT_TOKENS, physical_cores

    results = {}
    for spec in DECODE_MODELS:
        generator = models.create("generator", spec, settings)
        assert isinstance(generator, LlamaCppGenerator), "set KBLOOP_ENGINE=llamacpp"
        generator.load()
        plain = llama_cpp.Llama(model_path=str(generator.model_file()), n_ctx=CONTEXT_TOKENS, n_threads=physical_cores(),
                                n_threads_batch=physical_cores(), verbose=False)
        kbloop_runs, plain_runs = [], []
        warm = cases[0][1]
        kbloop_reply(generator, warm, 4)
        plain_reply(plain, generator.prompt_tokens(warm), 4)
        for _, messages, _ in cases:
            # Alternated, so drift in the machine's load hits both alike.
            plain_runs.append(plain_reply(plain, generator.prompt_tokens(messages), new_tokens))
            kbloop_runs.append(kbloop_reply(generator, messages, new_tokens))
        plain.close()
        generator.close()
        k, p = median([r["decode_tps"] for r in kbloop_runs]), median([r["decode_tps"] for r in plain_runs])
        results[spec] = {"kbloop_decode_tps": k, "plain_decode_tps": p, "decode_vs_llamacpp": ratio(k, p),
                         "kbloop_ttft_s": median([r["ttft_s"] for r in kbloop_runs]),
                         "plain_ttft_s": median([r["ttft_s"] for r in plain_runs]), "prompts": len(cases)}
        print(f"{spec}: kbloop {k} tok/s, plain llama-cpp-python {p} tok/s -> {results[spec]['decode_vs_llamacpp']}")
    return results


def part_transformers(settings: Settings, cases: list, new_tokens: int) -> dict:
    rows = {}
    for engine in ("llamacpp", "transformers"):
        generator = models.create("generator", ANSWER_MODEL, settings.model_copy(update={"engine": engine}))
        generator.generate(cases[0][1], max_new_tokens=2)  # load (and convert) outside the timing
        runs = [kbloop_reply(generator, messages, new_tokens) for _, messages, _ in cases]
        rows[engine] = {"decode_tps": median([r["decode_tps"] for r in runs]),
                        "ttft_s": median([r["ttft_s"] for r in runs])}
        print(f"{ANSWER_MODEL} on {engine}: {rows[engine]}")
        del generator
    fast, slow = rows["llamacpp"], rows["transformers"]
    return {"model": ANSWER_MODEL, "engines": rows, "prompts": len(cases),
            "decode_vs_transformers": ratio(fast["decode_tps"], slow["decode_tps"]),
            "ttft_vs_transformers": ratio(fast["ttft_s"], slow["ttft_s"])}


def part_weights(settings: Settings, cases: list, new_tokens: int) -> dict:
    """The answering model on its packaged file and on its fast weights, the same prompts in turn."""
    generators = {}
    for weights in ("packaged", "fast"):
        generators[weights] = models.create("generator", ANSWER_MODEL,
                                            settings.model_copy(update={"llamacpp_weights": weights}))
        generators[weights].generate(cases[0][1], max_new_tokens=2)  # load (and re-quantise) untimed
    runs: dict[str, list[dict]] = {"packaged": [], "fast": []}
    for _, messages, _ in cases:
        for weights, generator in generators.items():
            runs[weights].append(kbloop_reply(generator, messages, new_tokens))
    rows = {weights: {"file": generators[weights].model_file().name,
                      "ttft_s": median([r["ttft_s"] for r in got]),
                      "decode_tps": median([r["decode_tps"] for r in got])}
            for weights, got in runs.items()}
    for generator in generators.values():
        generator.close()
    result = {"model": ANSWER_MODEL, "weights": rows, "prompts": len(cases),
              "weights_ttft_ratio": ratio(rows["fast"]["ttft_s"], rows["packaged"]["ttft_s"]),
              "weights_decode_ratio": ratio(rows["fast"]["decode_tps"], rows["packaged"]["decode_tps"])}
    print(f"{ANSWER_MODEL} weights: {rows}; fast/packaged TTFT {result['weights_ttft_ratio']}, "
          f"decode {result['weights_decode_ratio']}")
    return result


def judge_prompts(cases: list, count: int) -> list[str]:
    """The judge's real prompt, each different (a repeated prompt would be served from the
    cache): every question with its right answer, then with another question's answer."""
    out = []
    for i in range(count):
        item, _, texts = cases[i % len(cases)]
        answer = item["answer"] if i < len(cases) else cases[(i + 1) % len(cases)][0]["answer"]
        out.append(SCORE_PROMPT.format(question=item["question"], reference=item["answer"],
                                       sources="\n---\n".join(t.strip() for t in texts)[:1500], answer=answer))
    return out


def verdict_seconds(judge: Any, prompt: str) -> tuple[float, bool]:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{prompt}\n\n{schema_instructions(SCORES_SCHEMA)}"}]
    started = time.perf_counter()
    reply = judge._json_reply(messages, SCORES_SCHEMA, 160)
    seconds = time.perf_counter() - started
    try:
        json.loads(reply)
        parse_json(reply, SCORES_SCHEMA)
        valid = True
    except (ValueError, JsonOutputError):
        valid = False
    return seconds, valid


def part_judge(settings: Settings, cases: list, verdicts: int, slow_verdicts: int) -> dict:
    texts = judge_prompts(cases, verdicts + 1)
    fast = models.create("judge", JUDGE_MODEL, settings)
    verdict_seconds(fast, texts[-1])  # warm up
    fast_runs = [verdict_seconds(fast, text) for text in texts[:verdicts]]
    fast.close()
    slow = models.create("judge", JUDGE_MODEL, settings.model_copy(update={"engine": "transformers"}))
    slow.generate([{"role": "user", "content": "hi"}], max_new_tokens=2)
    slow_runs = [verdict_seconds(slow, text) for text in texts[:slow_verdicts]]
    del slow
    f, s = median([t for t, _ in fast_runs]), median([t for t, _ in slow_runs])
    result = {"model": JUDGE_MODEL, "llamacpp_s_per_verdict": f, "transformers_s_per_verdict": s,
              "judge_vs_transformers": ratio(f, s), "verdicts": len(fast_runs),
              "judge_invalid_json": sum(not ok for _, ok in fast_runs),
              "transformers_verdicts": len(slow_runs), "transformers_invalid_json": sum(not ok for _, ok in slow_runs)}
    print(f"judge: {result}")
    return result


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def part_cli(home: Home, settings: Settings, questions: list[str]) -> dict:
    result: dict = {"serve_peak_rss_mib": {}}
    for engine in ("llamacpp", "transformers"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
        env.update(KBLOOP_HOME=str(home.root), KBLOOP_ENGINE=engine, KBLOOP_SERVE_PORT="0",
                   KBLOOP_MODEL_CACHE=settings.model_cache, OMP_WAIT_POLICY="PASSIVE")
        serve = subprocess.Popen([sys.executable, "-m", "kbloop.cli.main", "serve"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = serve.stdout.readline().strip()
            request = {"model": "kbloop", "messages": [{"role": "user", "content": questions[0]}]}
            httpx.post(f"{url}/v1/chat/completions", json=request, timeout=900).raise_for_status()  # loads models
            if engine == "llamacpp":
                server_s, cli_s = [], []

                def over_http(question: str) -> float:
                    request["messages"][0]["content"] = question
                    started = time.perf_counter()
                    httpx.post(f"{url}/v1/chat/completions", json=request, timeout=900).raise_for_status()
                    return time.perf_counter() - started

                # The engine keeps the last prompt's key/values: another question in between
                # makes the command's answer start as cold as the server's did.
                filler = questions[-1]
                for question in questions[:-1]:
                    over_http(filler)
                    server_s.append(over_http(question))
                    over_http(filler)
                    started = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "kbloop.cli.main", "ask", question], env=env,
                                          capture_output=True, text=True)
                    cli_s.append(time.perf_counter() - started)
                    assert done.returncode == 0, done.stderr
                result.update({"server_answer_s": median(server_s), "cli_ask_s": median(cli_s),
                               "cli_ask_vs_server": ratio(median(cli_s), median(server_s)), "questions": len(server_s)})
            result["serve_peak_rss_mib"][engine] = vm_hwm_mib(serve.pid)
        finally:
            serve.terminate()
            serve.wait(60)
    print(f"cli: {result}")
    return result


def part_adapter(settings: Settings, cases: list, adapter: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    generator = models.create("generator", ANSWER_MODEL, settings)
    base_dir = generator.base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter).eval()
    generator.use_adapter(adapter)
    same = 0
    for _, messages, _ in cases:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            out = peft_model.generate(**inputs, max_new_tokens=PREFIX_TOKENS, do_sample=False)
        expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        same += generator.generate(messages, max_new_tokens=PREFIX_TOKENS) == expected
    generator.close()
    result = {"adapter": str(adapter), "prompts": len(cases), "same_first_16_tokens": same,
              "adapter_prefix_match": round(same / len(cases), 3)}
    print(f"adapter: {result}")
    return result


# -- running -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(p for p in PARTS if p != "adapter"),
                        help=f"comma-separated, of {', '.join(PARTS)} (adapter needs --adapter)")
    parser.add_argument("--adapter", type=Path, help="a kbloop adapter folder trained for qwen2.5-0.5b")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per decode measurement (default 8)")
    parser.add_argument("--verdicts", type=int, default=50, help="llama.cpp judge verdicts (default 50)")
    parser.add_argument("--slow-verdicts", type=int, default=3, help="transformers judge verdicts (default 3)")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="the kbdev folder")
    parser.add_argument("--workdir", type=Path, help="keeps the ingested home between runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in args.parts if p not in PARTS]:
        parser.error(f"--parts: unknown {', '.join(unknown)}")
    if "adapter" in args.parts and not args.adapter:
        parser.error("--parts adapter needs --adapter DIR")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kbloop-bench-inference-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home = kbdev_home(workdir, args.bench.resolve())
    settings = home.load_settings()
    cases = prompts(home, args.bench.resolve(), max(args.prompts, 40 if {"judge", "adapter"} & set(args.parts) else 0))
    few = cases[:args.prompts]
    results: dict = {"engine": settings.engine, "new_tokens": args.new_tokens, "cpu_count": os.cpu_count()}
    started = time.perf_counter()
    if "decode" in args.parts:
        results["decode"] = part_decode(settings, few, args.new_tokens)
        for spec, row in results["decode"].items():
            results[f"decode_vs_llamacpp[{spec}]"] = row["decode_vs_llamacpp"]
    if "transformers" in args.parts:
        results["transformers"] = part_transformers(settings, few, args.new_tokens)
        results["decode_vs_transformers"] = results["transformers"]["decode_vs_transformers"]
        results["ttft_vs_transformers"] = results["transformers"]["ttft_vs_transformers"]
    if "weights" in args.parts:
        results["weights"] = part_weights(settings, few, args.new_tokens)
        results["weights_ttft_ratio"] = results["weights"]["weights_ttft_ratio"]
        results["weights_decode_ratio"] = results["weights"]["weights_decode_ratio"]
    if "judge" in args.parts:
        results["judge"] = part_judge(settings, cases, args.verdicts, args.slow_verdicts)
        results["judge_vs_transformers"] = results["judge"]["judge_vs_transformers"]
        results["judge_invalid_json"] = results["judge"]["judge_invalid_json"]
    if "cli" in args.parts:
        results["cli"] = part_cli(home, settings, [item["question"] for item, _, _ in few[:4]])
        results["cli_ask_vs_server"] = results["cli"]["cli_ask_vs_server"]
        results["serve_peak_rss_mib"] = results["cli"]["serve_peak_rss_mib"]
    if "adapter" in args.parts:
        results["adapter"] = part_adapter(settings, cases[:40], args.adapter)
        results["adapter_prefix_match"] = results["adapter"]["adapter_prefix_match"]
    results["seconds"] = round(time.perf_counter() - started, 1)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
