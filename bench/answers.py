"""Answer benchmark: kbloop's question answering against a plain LangChain RAG baseline.

Both pipelines answer the kbdev benchmark (``../shared/kbdev``) over ``corpus/initial``
with the same embedding model (local:all-minilm-l6-v2) and the same generator object, greedily:

- ``kbloop``: a kbloop home holding the corpus, ingested once; ``Assistant(kb).ask(question)``.
  Retrieval is measured with ``kb.search(question, 5)``.
- ``api`` (on request): the same kbloop home answered through ``kbloop serve``'s app on a
  loopback port, as a chat client meets it: a non-streamed POST to the OpenAI-compatible
  ``/v1/chat/completions`` per question, graded on the reply's message content, its cited
  sources read from the reply's ``kbloop`` field, retrieval measured with ``/api/search``.
- ``plain``: stock LangChain parts: one langchain-community loader per format (TextLoader for
  .md/.txt, BSHTMLLoader for .html, PyPDFLoader for .pdf, Docx2txtLoader for .docx),
  RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=150), a langchain-community
  FAISS store, the top 4 chunks of ``similarity_search`` as context, and a one-line
  "answer using only the context" prompt. Refusals are judged with kbloop's ``is_refusal``.

For every model in ``--models`` and every pipeline in ``--pipelines`` it reports:

- hit@1 / hit@5: the gold source file (``source`` or ``source2``) is among the top 1 / 5
  retrieved chunks' files (qa_initial items);
- accuracy: answers to qa_initial that state the answer or an accepted form
  (``kbloop.evaluate.metrics.matches``, which ignores citation marks such as ``[1]``, so a
  bare citation never counts as the number 1); a refusal is never
  correct there;
- refusal: qa_unanswerable items (answer NOT_IN_KB) where the pipeline says the knowledge
  base does not hold the answer (the correct behaviour);
- false refusal: qa_initial items the pipeline refused;
- median time to first token (from the start of generation, retrieval excluded) and median
  decode tokens/s ((completion tokens - 1) / time from first to last token), over the items
  that reached the model.

On a full run (no ``--limit``) the kbloop pipeline also holds the benchmark's chat scenario
(``bench/chat/<benchmark folder>.jsonl``, see its README): conversations whose follow-ups name
their subject only through earlier turns, and topic switches. It reports accuracy per kind of
turn and "carried over": wrong answers that state an earlier turn's expected answer.

Each model is loaded and warmed up before anything is timed. Per-item results (question,
expected and given answer, correct, refused, top sources, timings) go to
``bench/out/answers-<time>.jsonl``.

Run it from the repository root:

    pip install -r bench/requirements.txt
    python bench/answers.py [--bench kbdev,pydev,pgdev]
                            [--models local:qwen2.5-0.5b,local:qwen2.5-1.5b@retrieve_k=2]
                            [--engine llamacpp|transformers]
                            [--pipelines kbloop,plain,api] [--limit N] [--ids i03,n02]
                            [--workdir DIR] [--keep] [--json]

``--ids`` asks only the items it names. Answers do not depend on the questions asked before
them, so the questions whose sources a change moves can be asked again under both builds,
and the rest of a full run stands.

``--bench`` names one benchmark folder or several, comma-separated; ``kbdev``, ``pydev`` and
``pgdev`` name the three this repository measures (``../shared/kbdev``, ``bench/pydev``,
``bench/pgdev``). Several are run one after the other, and a last table puts them side by side.

A model entry may carry kbloop settings for its run after ``@``, such as
``local:qwen2.5-1.5b@retrieve_k=2`` or ``local:qwen2.5-0.5b@retrieve_k=3@read_again=false``, so that
variants are compared in one run; the plain pipeline ignores them.

The full default run (2 models x 2 pipelines x 48 questions) takes tens of minutes on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from kbloop import models
from kbloop.assistant.answer import Assistant
from kbloop.config import Home, Settings
from kbloop.evaluate.metrics import UNANSWERABLE, matches, reference_forms
from kbloop.kb import KnowledgeBase
from kbloop.prompt import is_refusal
from kbloop.server.app import MODEL_ID, create_app, running
from kbloop.server.service import Service
from workdir import bench_workdir, corpus_home

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BENCH = REPO.parent / "shared" / "kbdev"
# The benchmarks by name: kbloop's checks were developed on the first two; pgdev is for measuring only.
CORPORA = {"kbdev": DEFAULT_BENCH, "pydev": REPO / "bench" / "pydev", "pgdev": REPO / "bench" / "pgdev"}
OUT_DIR = REPO / "bench" / "out"
CHAT_DIR = REPO / "bench" / "chat"
EMBEDDER = "local:all-minilm-l6-v2"
DEFAULT_MODELS = Settings.model_fields["generator"].default  # the default generator alone
PIPELINES = ("kbloop", "plain", "api")
DEFAULT_PIPELINES = ("kbloop", "plain")

HIT_K = 5
PLAIN_CONTEXT_K = 4
PLAIN_CHUNK_SIZE = 1000
PLAIN_CHUNK_OVERLAP = 150
PLAIN_MAX_NEW_TOKENS = 200
PLAIN_SYSTEM = "Answer using only the context; if it is not there, say you don't know."


# -- benchmark items -------------------------------------------------------------------------

def read_jsonl(path: Path, limit: int | None) -> list[dict]:
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return items[:limit] if limit else items


def load_items(bench: Path, limit: int | None, ids: list[str] | None = None) -> list[dict]:
    """qa_initial then qa_unanswerable, each item tagged with the file it came from; only the
    items ``ids`` names, when it names any."""
    items = []
    for name in ("qa_initial", "qa_unanswerable"):
        for item in read_jsonl(bench / f"{name}.jsonl", limit):
            if not ids or item.get("id") in ids:
                items.append({**item, "set": name})
    return items


def load_chats(bench: Path, items: list[dict]) -> list[dict]:
    """The chat scenario of this benchmark (``bench/chat/<folder name>.jsonl``; none when
    absent): each turn carries its item's expected answer and its own wording."""
    path = CHAT_DIR / f"{bench.name}.jsonl"
    if not path.is_file():
        return []
    by_id = {item["id"]: item for item in read_jsonl(bench / "qa_initial.jsonl", None)}
    chats = []
    for chat in read_jsonl(path, None):
        turns = [{**by_id[turn["item"]], "set": "chat", "chat": chat["id"], "kind": turn["kind"],
                  "question": turn.get("question", by_id[turn["item"]]["question"])} for turn in chat["turns"]]
        chats.append({"id": chat["id"], "turns": turns})
    return chats


def carried_over(record: dict, earlier: list[dict]) -> bool:
    """A wrong answer that states an earlier turn's expected answer: the conversation leaked into it."""
    return not record["correct"] and not record["refused"] and any(
        matches(record["answer"], reference_forms(turn)) for turn in earlier)


def gold_sources(item: dict) -> set[str]:
    return {s for s in (item.get("source"), item.get("source2")) if s}


def answerable(item: dict) -> bool:
    return item["answer"] != UNANSWERABLE


def file_name(path: str) -> str:
    return Path(path).name


# -- one answer, whatever the pipeline -------------------------------------------------------

@dataclass
class Reply:
    """What a pipeline said for one question, and how long generation took."""

    answer: str
    refused: bool
    sources: list[dict]
    first_token_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    refusal_reason: str | None = None
    steps: list[str] = field(default_factory=list)  # kbloop: "asked_again", "quoted", "read_again", ...
    asked_as: str | None = None  # kbloop: a chat follow-up as rewritten to stand alone
    value_confidence: float | None = None  # kbloop: the least sure value of an answer the judge then checked
    support: float | None = None  # kbloop: the judge's probability that a source states that value
    least_sure_word: str | None = None  # kbloop: the word of the answer the model was least sure of
    word_confidence: float | None = None  # kbloop: the probability of that word's first token


def grade(item: dict, reply: Reply) -> bool:
    if not answerable(item):
        return reply.refused
    return not reply.refused and matches(reply.answer, reference_forms(item))


def stream_timed(pieces: Iterator[str], stats: dict) -> tuple[str, float | None, float | None]:
    """Consume a generator stream: its text, seconds to the first piece, decode tokens/s."""
    started = time.perf_counter()
    first = None
    text = []
    for piece in pieces:
        if first is None:
            first = time.perf_counter()
        text.append(piece)
    done = time.perf_counter()
    tokens = stats.get("completion_tokens") or 0
    tps = max(tokens - 1, 0) / (done - first) if first is not None and done > first else None
    return "".join(text).strip(), (first or done) - started, tps


# -- the kbloop pipeline ---------------------------------------------------------------------

STEPS = ("asked_again", "quoted", "read_again", "reread_unsure", "judge_found_no_answer")


def kbloop_reply(answer: dict) -> Reply:
    """A Reply from kbloop's answer as ``Answer.as_dict`` gives it, in process or in the
    ``kbloop`` field of an API reply."""
    timings = answer["timings"]
    return Reply(
        answer=answer["answer"], refused=answer["refused"],
        sources=[{"path": s["path"], "score": s["score"], "cited": s["cited"]} for s in answer["sources"]],
        first_token_s=timings.get("first_token_s"), tokens_per_s=timings.get("tokens_per_s"),
        prompt_tokens=timings.get("prompt_tokens"), completion_tokens=timings.get("completion_tokens"),
        refusal_reason=answer["refusal_reason"], steps=[k for k in STEPS if timings.get(k)],
        asked_as=timings.get("asked_as"),
        value_confidence=timings.get("value_confidence"), support=timings.get("support"),
        least_sure_word=timings.get("least_sure_word"), word_confidence=timings.get("word_confidence"),
    )


def ingest_kbloop(home: Home, embedder: Any) -> dict:
    with KnowledgeBase(home, embedder=embedder) as kb:
        started = time.perf_counter()
        counts = kb.ingest()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "files": counts.files_added, "chunks": counts.chunks_embedded,
            "failed": counts.files_failed}


def model_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``SPEC@setting=value@...``: the generator spec and the kbloop settings of its run."""
    spec, *pairs = entry.split("@")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in Settings.model_fields:
            raise SystemExit(f"--models: {pair!r} in {entry!r} is not setting=value for a kbloop setting")
        overrides[key.strip()] = value.strip()
    return spec, overrides


def entry_settings(settings: Settings, entry: str) -> Settings:
    spec, overrides = model_entry(entry)
    return Settings.model_validate({**settings.model_dump(), **overrides, "generator": spec})


class KbloopPipeline:
    name = "kbloop"

    def __init__(self, home: Home, embedder: Any, generator: Any, settings: Settings):
        """``settings`` are the run's: the model entry's overrides and ``--engine`` applied, so
        that the judge of a second reading runs as the generator does."""
        self.kb = KnowledgeBase(home, settings, embedder=embedder, generator=generator)
        self.assistant = Assistant(self.kb)

    def top_files(self, question: str) -> list[str]:
        """The files of the first chunks ``kb.search`` finds, with this run's settings."""
        return [file_name(h.path) for h in self.kb.search(question, HIT_K)]

    def answer(self, question: str, history: list[tuple[str, str]] | None = None) -> Reply:
        return kbloop_reply(self.assistant.ask(question, history).as_dict())

    def close(self) -> None:
        self.kb.close()


class ApiPipeline:
    """kbloop as a chat client meets it: ``kbloop serve``'s app (the same Service and routes)
    on a loopback port of this process, each question a non-streamed POST to the OpenAI-compatible
    ``/v1/chat/completions``, graded on the reply's message content, with the sources it cites read
    from the reply's ``kbloop`` field. The earlier turns of a chat go as earlier messages."""

    name = "api"

    def __init__(self, home: Home, embedder: Any, generator: Any, settings: Settings):
        self.service = Service(home, settings, embedder=embedder, generator=generator)
        self._serving = running(create_app(self.service))
        self.url = self._serving.__enter__()
        key = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=key, timeout=httpx.Timeout(10.0, read=900.0))

    def top_files(self, question: str) -> list[str]:
        found = self.client.post("/api/search", json={"query": question, "k": HIT_K})
        found.raise_for_status()
        return [file_name(hit["path"]) for hit in found.json()["hits"]]

    def answer(self, question: str, history: list[tuple[str, str]] | None = None) -> Reply:
        messages = [m for q, a in history or [] for m in ({"role": "user", "content": q},
                                                          {"role": "assistant", "content": a})]
        messages.append({"role": "user", "content": question})
        reply = self.client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages})
        reply.raise_for_status()
        body = reply.json()
        graded = kbloop_reply(body["kbloop"])
        graded.answer = body["choices"][0]["message"]["content"]
        return graded

    def close(self) -> None:
        self.client.close()
        self._serving.__exit__(None, None, None)
        self.service.close()


# -- the plain LangChain pipeline ------------------------------------------------------------

def langchain_loader(path: Path) -> Any:
    """The stock langchain-community loader for one file, by extension."""
    from langchain_community.document_loaders import (
        BSHTMLLoader, Docx2txtLoader, PyPDFLoader, TextLoader,
    )

    loaders: dict[str, Callable[[str], Any]] = {
        ".md": lambda p: TextLoader(p, encoding="utf-8"),
        ".txt": lambda p: TextLoader(p, encoding="utf-8"),
        ".html": lambda p: BSHTMLLoader(p, open_encoding="utf-8"),
        ".pdf": PyPDFLoader,
        ".docx": Docx2txtLoader,
    }
    make = loaders.get(path.suffix.lower())
    return make(str(path)) if make else None


def load_corpus(corpus: Path) -> tuple[list[Any], list[str]]:
    """LangChain documents for every file, and one note per file that could not be loaded."""
    from bs4 import XMLParsedAsHTMLWarning

    documents, notes = [], []
    for path in sorted(p for p in corpus.iterdir() if p.is_file()):
        loader = langchain_loader(path)
        if loader is None:
            notes.append(f"{path.name}: no loader for {path.suffix}")
            continue
        try:
            with warnings.catch_warnings():  # the corpus's XHTML pages, parsed as HTML on purpose
                warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
                documents += loader.load()
        except Exception as exc:  # a baseline file that fails is reported, not fatal
            notes.append(f"{path.name}: {exc.__class__.__name__}: {exc}")
    return documents, notes


def build_plain_store(corpus: Path, embedder: Any) -> tuple[Any, dict]:
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    started = time.perf_counter()
    documents, notes = load_corpus(corpus)
    splitter = RecursiveCharacterTextSplitter(chunk_size=PLAIN_CHUNK_SIZE, chunk_overlap=PLAIN_CHUNK_OVERLAP)
    chunks = splitter.split_documents(documents)
    store = FAISS.from_documents(chunks, embedder.as_langchain())
    info = {"seconds": time.perf_counter() - started, "documents": len(documents),
            "chunks": len(chunks), "notes": notes}
    return store, info


def plain_search(store: Any, question: str, k: int) -> list[Any]:
    return store.similarity_search(question, k=k)


def plain_messages(question: str, chunks: list[Any]) -> list[dict]:
    context = "\n\n".join(chunk.page_content for chunk in chunks)
    return [
        {"role": "system", "content": PLAIN_SYSTEM},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
    ]


class PlainPipeline:
    name = "plain"

    def __init__(self, store: Any, generator: Any):
        self.store = store
        self.generator = generator

    def top_files(self, question: str) -> list[str]:
        return [file_name(d.metadata.get("source", "")) for d in plain_search(self.store, question, HIT_K)]

    def answer(self, question: str) -> Reply:
        chunks = plain_search(self.store, question, PLAIN_CONTEXT_K)
        stats: dict = {}
        pieces = self.generator.stream(plain_messages(question, chunks),
                                       max_new_tokens=PLAIN_MAX_NEW_TOKENS, stats=stats)
        text, first_token_s, tps = stream_timed(pieces, stats)
        return Reply(
            answer=text, refused=is_refusal(text, question),
            sources=[{"path": file_name(c.metadata.get("source", "")), "page": c.metadata.get("page")}
                     for c in chunks],
            first_token_s=first_token_s, tokens_per_s=tps,
            prompt_tokens=stats.get("prompt_tokens"), completion_tokens=stats.get("completion_tokens"),
        )

    def close(self) -> None:
        pass


# -- running and scoring ---------------------------------------------------------------------

@dataclass
class Context:
    """Everything prepared once and shared by all models."""

    items: list[dict]
    embedder: Any
    home: Home
    store: Any = None


def open_pipeline(name: str, ctx: Context, generator: Any, settings: Settings) -> Any:
    if name in PIPELINE_CLASSES:
        return PIPELINE_CLASSES[name](ctx.home, ctx.embedder, generator, settings)
    return PlainPipeline(ctx.store, generator)


PIPELINE_CLASSES = {"kbloop": KbloopPipeline, "api": ApiPipeline}


def item_record(item: dict, pipeline: str, model: str, reply: Reply, top_files: list[str], seconds: float) -> dict:
    gold = sorted(gold_sources(item))
    return {
        "id": item["id"], "set": item["set"], "pipeline": pipeline, "model": model,
        "question": item["question"], "expected": item["answer"], "accept": item.get("accept", []),
        "answer": reply.answer, "correct": grade(item, reply), "refused": reply.refused,
        "refusal_reason": reply.refusal_reason, "steps": reply.steps, "asked_as": reply.asked_as,
        "value_confidence": reply.value_confidence, "support": reply.support,
        "least_sure_word": reply.least_sure_word, "word_confidence": reply.word_confidence,
        "gold_sources": gold, "type": item.get("type"),
        # kbloop cites some of its sources; the plain pipeline shows all it was given.
        "cited_gold": bool(gold) and any(file_name(src["path"]) in gold for src in reply.sources
                                         if src.get("cited", True)),
        "hit1": bool(gold) and any(f in gold for f in top_files[:1]),
        "hit5": bool(gold) and any(f in gold for f in top_files[:HIT_K]),
        "retrieved_top5": top_files, "top_sources": reply.sources,
        "first_token_s": reply.first_token_s, "tokens_per_s": reply.tokens_per_s,
        "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "seconds": round(seconds, 3),
    }


def run_pipeline(pipeline: Any, model: str, ctx: Context, out: Any) -> list[dict]:
    records = []
    for n, item in enumerate(ctx.items, 1):
        top_files = pipeline.top_files(item["question"])
        started = time.perf_counter()
        reply = pipeline.answer(item["question"])
        record = item_record(item, pipeline.name, model, reply, top_files, time.perf_counter() - started)
        records.append(record)
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        ttft = f"{reply.first_token_s:.2f}s" if reply.first_token_s is not None else "-"
        print(f"  [{n}/{len(ctx.items)}] {item['id']} correct={record['correct']!s:5} "
              f"refused={reply.refused!s:5} ttft={ttft} answer={one_line(reply.answer, 70)!r}"
              + (f" ({', '.join(reply.steps)})" if reply.steps else "")
              + (f" ({reply.refusal_reason})" if reply.refused and reply.refusal_reason else ""), flush=True)
    return records


def run_chats(pipeline: Any, model: str, chats: list[dict], out: Any) -> list[dict]:
    """Each conversation turn by turn, the earlier turns (questions and the pipeline's own
    answers) as history."""
    records = []
    for chat in chats:
        history: list[tuple[str, str]] = []
        earlier: list[dict] = []
        for turn in chat["turns"]:
            started = time.perf_counter()
            reply = pipeline.answer(turn["question"], history)
            record = item_record(turn, pipeline.name, model, reply, [], time.perf_counter() - started)
            record.update({"chat": chat["id"], "kind": turn["kind"], "carried_over": carried_over(record, earlier)})
            records.append(record)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            print(f"  chat {chat['id']} {turn['kind']:9} {turn['id']} correct={record['correct']!s:5} "
                  f"carried={record['carried_over']!s:5} answer={one_line(reply.answer, 60)!r}", flush=True)
            history.append((turn["question"], reply.answer))
            earlier.append(turn)
    return records


def summarise_chats(records: list[dict]) -> dict:
    return {"turns": rate(records, "correct"),
            **{kind: rate([r for r in records if r["kind"] == kind], "correct")
               for kind in ("first", "follow-up", "switch")},
            "carried_over": rate(records, "carried_over")}


def chat_table(rows: list[dict]) -> str:
    """One line per model and pipeline; with a first column naming the corpus when the rows carry one."""
    by_corpus = any("corpus" in row for row in rows)
    header = (("corpus",) if by_corpus else ()) + (
        "model", "pipeline", "all turns", "first", "follow-up", "switch", "carried over")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        s = row["chat"]
        lines.append("| " + " | ".join(((row.get("corpus", ""),) if by_corpus else ()) + (
            row["model"], row["pipeline"], *(format_rate(s[k]) for k in (
                "turns", "first", "follow-up", "switch", "carried_over")))) + " |")
    return "\n".join(lines)


def one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def load_generator(model: str, settings: Any) -> tuple[Any, float]:
    """The generator for ``model``, loaded (and converted if needed) and warmed up."""
    generator = models.create("generator", model, settings)
    started = time.perf_counter()
    generator.generate([{"role": "user", "content": "hi"}], max_new_tokens=2)
    return generator, time.perf_counter() - started


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rate(records: list[dict], key: str) -> dict:
    hits = sum(1 for r in records if r[key])
    return {"n": hits, "of": len(records), "rate": hits / len(records) if records else None}


def summarise(records: list[dict]) -> dict:
    answerable_records = [r for r in records if r["expected"] != UNANSWERABLE]
    unanswerable_records = [r for r in records if r["expected"] == UNANSWERABLE]
    return {
        "hit1": rate(answerable_records, "hit1"),
        "hit5": rate(answerable_records, "hit5"),
        "accuracy": rate(answerable_records, "correct"),
        "refusal": rate(unanswerable_records, "correct"),
        "false_refusal": rate(answerable_records, "refused"),
        "cited_gold": rate(answerable_records, "cited_gold"),
        "multi_hop_accuracy": rate([r for r in answerable_records if r.get("type") == "multi-hop"], "correct"),
        "median_first_token_s": median([r["first_token_s"] for r in records]),
        "median_tokens_per_s": median([r["tokens_per_s"] for r in records]),
        "seconds": sum(r["seconds"] for r in records),
    }


def format_rate(value: dict) -> str:
    if value["rate"] is None:
        return "-"
    return f"{value['rate']:.3f} ({value['n']}/{value['of']})"


def format_number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(rows: list[dict]) -> str:
    """One line per model and pipeline; with a first column naming the corpus when the rows
    carry one (a run over several benchmarks)."""
    by_corpus = any("corpus" in row for row in rows)
    header = (("corpus",) if by_corpus else ()) + (
        "model", "pipeline", "hit@1", "hit@5", "accuracy", "refusal (unanswerable)",
        "false refusal", "cited gold source", "multi-hop accuracy", "median TTFT s", "median decode tok/s",
        "answer time s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        s = row["summary"]
        cells = ((row.get("corpus", ""),) if by_corpus else ()) + (
                 row["model"], row["pipeline"], format_rate(s["hit1"]), format_rate(s["hit5"]),
                 format_rate(s["accuracy"]), format_rate(s["refusal"]), format_rate(s["false_refusal"]),
                 format_rate(s["cited_gold"]), format_rate(s["multi_hop_accuracy"]),
                 format_number(s["median_first_token_s"], 2), format_number(s["median_tokens_per_s"], 1),
                 format_number(s["seconds"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- setup and main --------------------------------------------------------------------------

def prepare(ctx: Context, pipelines: list[str], corpus: Path) -> dict:
    """Index the corpus once for each pipeline."""
    info = {}
    if {"kbloop", "api"} & set(pipelines):
        info["kbloop"] = ingest_kbloop(ctx.home, ctx.embedder)
        print(f"kbloop: ingested {info['kbloop']['files']} files, {info['kbloop']['chunks']} chunks "
              f"({info['kbloop']['failed']} failed) in {info['kbloop']['seconds']:.1f} s")
    if "plain" in pipelines:
        ctx.store, info["plain"] = build_plain_store(corpus, ctx.embedder)
        print(f"plain: {info['plain']['documents']} LangChain documents, {info['plain']['chunks']} chunks "
              f"in {info['plain']['seconds']:.1f} s")
        for note in info["plain"]["notes"]:
            print(f"  plain loader note: {note}")
    return info


def run(args: argparse.Namespace, workdir: Path, out_path: Path) -> dict:
    items = [] if args.chat_only else load_items(args.bench, args.limit, args.ids)
    chats = [] if args.limit or args.ids else load_chats(args.bench, items)
    corpus = args.bench / "corpus" / "initial"
    print(f"benchmark: {args.bench} ({sum(answerable(i) for i in items)} answerable, "
          f"{sum(not answerable(i) for i in items)} unanswerable items)")
    print(f"workdir: {workdir}\nper-item results: {out_path}")

    home = corpus_home(workdir / "kbloop", corpus)
    settings = home.load_settings()
    if args.engine:
        settings = settings.model_copy(update={"engine": args.engine})
    print(f"engine for local models: {settings.engine}")
    ctx = Context(items=items, embedder=models.create("embedder", EMBEDDER, settings), home=home)
    ctx.embedder.embed(["warm up"])
    indexes = prepare(ctx, args.pipelines, corpus)

    rows = []
    with out_path.open("w", encoding="utf-8") as out:
        for model in args.models:
            run_settings = entry_settings(settings, model)
            generator, warm_seconds = load_generator(run_settings.generator, run_settings)
            print(f"\n{model}: loaded and warmed up in {warm_seconds:.1f} s (not counted)")
            for name in args.pipelines:
                print(f"{model} / {name}:", flush=True)
                pipeline = open_pipeline(name, ctx, generator, run_settings)
                try:
                    records = run_pipeline(pipeline, model, ctx, out)
                    chat = run_chats(pipeline, model, chats, out) if name != "plain" and chats else None
                finally:
                    pipeline.close()
                rows.append({"model": model, "pipeline": name, "summary": summarise(records),
                             **({"chat": summarise_chats(chat)} if chat else {})})
            del generator

    print("\n## Summary\n")
    print(summary_table(rows))
    if any("chat" in row for row in rows):
        print(f"\n## Chat ({len(chats)} conversations, history shapes retrieval)\n")
        print(chat_table([row for row in rows if "chat" in row]))
    print(f"\nper-item results: {out_path}")
    return {"bench": str(args.bench), "embedder": EMBEDDER, "engine": settings.engine, "limit": args.limit,
            "indexes": indexes, "results": rows, "items_file": str(out_path)}


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=comma_list, default=comma_list(DEFAULT_MODELS),
                        help=f"generator specs, comma-separated (default: {DEFAULT_MODELS})")
    parser.add_argument("--pipelines", type=comma_list, default=list(DEFAULT_PIPELINES),
                        help="pipelines to run, comma-separated: kbloop, plain, api (kbloop through "
                             "kbloop serve's OpenAI-compatible API) (default: kbloop,plain)")
    parser.add_argument("--engine", choices=["llamacpp", "transformers"], default=None,
                        help="engine for local: models (default: KBLOOP_ENGINE, llamacpp)")
    parser.add_argument("--limit", type=int, default=None,
                        help="ask only the first N items of each qa file (quick runs)")
    parser.add_argument("--ids", type=comma_list, default=None,
                        help="ask only these items, comma-separated (i03,n02): the questions a change "
                             "touched, asked again; no chat scenario")
    parser.add_argument("--bench", type=comma_list, default=["kbdev"],
                        help="benchmark folders, comma-separated, or the names " + ", ".join(CORPORA)
                             + f" (default: kbdev, {DEFAULT_BENCH})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="empty or new folder for the indexes (default: a new temporary folder, "
                             "deleted at the end unless --keep; a folder given here is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--chat-only", action="store_true",
                        help="run only the chat scenario (kbloop and api pipelines), not the question sets")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = parser.parse_args(argv)
    unknown = [p for p in args.pipelines if p not in PIPELINES]
    if unknown or not args.pipelines:
        parser.error(f"--pipelines: expected some of {', '.join(PIPELINES)}, got {','.join(args.pipelines)}")
    if not args.models:
        parser.error("--models: give at least one generator spec")
    for entry in args.models:
        model_entry(entry)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.bench:
        parser.error("--bench: name at least one benchmark folder")
    if args.ids is not None and not args.ids:
        parser.error("--ids: name at least one item, e.g. --ids i03,n02")
    args.benches = [bench_folder(value) for value in args.bench]  # run() takes one at a time as args.bench
    return args


def bench_folder(value: str) -> Path:
    """A benchmark folder as given, or the one a name in ``CORPORA`` stands for."""
    path = Path(value)
    return (CORPORA[value] if value in CORPORA and not path.exists() else path).resolve()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for bench in args.benches:  # every folder is checked before the first one is run
        if not (bench / "qa_initial.jsonl").is_file():
            raise SystemExit(f"{bench} is not a benchmark folder (no qa_initial.jsonl)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    several = len(args.benches) > 1
    results = []
    with bench_workdir(args.workdir, args.keep, prefix="kbloop-bench-answers-") as workdir:
        for bench in args.benches:
            folder = workdir / bench.name if several else workdir
            folder.mkdir(parents=True, exist_ok=True)
            out_path = OUT_DIR / (f"answers-{stamp}-{bench.name}.jsonl" if several else f"answers-{stamp}.jsonl")
            if several:
                print(f"\n# {bench.name}\n")
            results.append(run(argparse.Namespace(**{**vars(args), "bench": bench}), folder, out_path))
    if several:
        rows = [{**row, "corpus": Path(result["bench"]).name} for result in results for row in result["results"]]
        if not args.chat_only:
            print("\n## All benchmarks\n")
            print(summary_table(rows))
        if chats := [row for row in rows if "chat" in row]:
            print("\n## Chat, all benchmarks\n")
            print(chat_table(chats))
    if args.json:
        print("\n" + json.dumps(results if several else results[0], indent=2))


if __name__ == "__main__":
    main()
