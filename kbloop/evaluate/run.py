"""``kbloop evaluate``: candidate against baseline on the eval set, a report, the gate.

The run, in ``evaluate``:

1. resolve the candidate (default: the newest adapter) and the baseline (default: the current
   adapter, or the base model when none is current);
2. build the eval set: held-out dataset items, new knowledge (the candidate's new dataset
   versions) and old, plus the user's eval files and, when there is a judge, the questions
   users marked wrong (which only the judge can score: they have no reference answer);
3. retrieval metrics once (hit@k and MRR of the gold chunk or file; the same for both sides);
4. each side answers every question through the assistant (its adapter applied); answer
   metrics: normalised match, token F1, refusal correctness;
5. the judge scores each answer, and compares the two answers in both orders;
6. the gate decides; the report, the decision and its reasons are recorded with the candidate,
   and ``--promote`` makes an accepted candidate current, unless another process promoted or
   rolled back since the run began (then the report stays, and CurrentChanged says so).
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

from kbloop.assistant.answer import Assistant
from kbloop.errors import KbloopError
from kbloop.evaluate.evalset import EvalItem, build_evalset
from kbloop.evaluate.gate import decide, score
from kbloop.evaluate.judge import Judge, judge_norm
from kbloop.evaluate.metrics import matches, token_f1
from kbloop.evaluate.report import EvalReport, write_report
from kbloop.evaluate.store import EvaluationStore, JudgeCache
from kbloop.finetune.registry import AdapterRegistry
from kbloop.progress import progress_bar

log = logging.getLogger(__name__)

SLICES = ("all", "new", "old", "user", "feedback")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def retrieval_ranks(kb, items: list[EvalItem], k: int) -> dict[str, int | None]:
    """1-based rank of each item's gold chunk (or gold file) in the top k, None when absent."""
    ranks: dict[str, int | None] = {}
    for item in items:
        if item.gold_hash is None and item.gold_path is None:
            continue
        hits = kb.search(item.question, k)
        rank = None
        for n, hit in enumerate(hits, start=1):
            if item.gold_hash:
                found = kb.manifest.text_hash_of(hit.vector_id) == item.gold_hash
            else:
                found = Path(hit.path).name == Path(item.gold_path).name
            if found:
                rank = n
                break
        ranks[item.id] = rank
    return ranks


def answer_all(kb, adapter: Path | None, items: list[EvalItem], progress: bool, label: str) -> dict[str, dict]:
    """Each item answered by the generator with ``adapter`` (None: the base model)."""
    generator = kb.model("generator")  # its own instance, dropped below with its weights
    generator.use_adapter(adapter)
    # what the model knows: not what users told it, nor what the judge reads again for it
    assistant = Assistant(kb, generator, corrections=False, judge_reads=False)
    out = {}
    for item in progress_bar(items, show=progress, desc=f"answers ({label})", unit="q"):
        ans = assistant.ask(item.question)
        correct: bool | None
        f1: float | None
        if item.judge_only:
            correct = f1 = None
        elif item.answerable:
            forms = [item.reference, *item.accept]
            correct = not ans.refused and matches(ans.answer, forms)
            f1 = round(0.0 if ans.refused else max(token_f1(ans.answer, f) for f in forms), 4)
        else:
            correct, f1 = ans.refused, float(ans.refused)
        out[item.id] = {"answer": ans.answer, "refused": ans.refused, "correct": correct, "f1": f1,
                        "sources": [s.text for s in ans.sources], "source_paths": [s.path for s in ans.sources]}
    del assistant, generator
    gc.collect()
    return out


def side_metrics(items: list[EvalItem], answers: dict[str, dict], ranks: dict[str, int | None], k: int) -> dict:
    by_slice = {}
    for part in SLICES:
        chosen = [i for i in items if part == "all" or i.slice == part]
        if not chosen:
            continue
        # Judge-only questions have no reference: the judge scores them, no metric does.
        scored = [i for i in chosen if not i.judge_only]
        answerable = [i for i in scored if i.answerable]
        unanswerable = [i for i in scored if not i.answerable]
        judgeable = [i for i in chosen if i.answerable]
        ranked = [ranks[i.id] for i in chosen if i.id in ranks]
        by_slice[part] = {
            "n": len(chosen),
            "accuracy": _mean([float(answers[i.id]["correct"]) for i in scored]),
            "answer_match": _mean([float(answers[i.id]["correct"]) for i in answerable]),
            "f1": _mean([answers[i.id]["f1"] for i in scored]),
            "refusal_correct": _mean([float(answers[i.id]["refused"]) for i in unanswerable]),
            "false_refusal": _mean([float(answers[i.id]["refused"]) for i in answerable]),
            "judge": _mean([answers[i.id].get("judge_norm") for i in judgeable]),
            "judge_failures": sum(1 for i in judgeable if "error" in answers[i.id].get("verdict", {})),
            f"hit@{k}": _mean([float(r is not None) for r in ranked]),
            "mrr": _mean([1.0 / r if r else 0.0 for r in ranked]),
        }
        by_slice[part]["score"] = score(by_slice[part])
    return by_slice


def knowledge_new_to(registry: AdapterRegistry, lineage: dict, kb) -> set[str]:
    """Dataset versions that are new knowledge for a candidate: those built after what its
    parent was trained on (all of them for a first adapter). The rest is old knowledge, where
    forgetting would show."""
    from kbloop.dataset.store import DatasetStore

    versions = {v["version"] for v in DatasetStore(kb.home, kb.manifest).versions()}
    parent = lineage.get("parent")
    known = registry.lineage(parent).get("dataset_versions", []) if parent and parent in registry.versions() else []
    if not known:
        return versions
    horizon = max(known)
    return {v for v in versions if v > horizon}


def evaluate(kb, candidate: str | None = None, baseline: str = "current", user_files: list[Path] | None = None,
             use_judge: bool = True, promote: bool = False, progress: bool = False,
             max_items: int | None = None) -> EvalReport:
    settings = kb.settings
    registry = AdapterRegistry(kb.home, kb.manifest)
    cand = registry.resolve(candidate or "latest")
    was_current = registry.current()
    if baseline == "current":
        base = was_current
    elif baseline == "base":
        base = None
    else:
        base = registry.resolve(baseline)
    if base == cand:
        raise KbloopError(f"the candidate and the baseline are both {cand}: name another --baseline (e.g. base)")
    lineage = registry.lineage(cand)
    if lineage.get("generator") != settings.generator:
        raise KbloopError(f"adapter {cand} was trained for {lineage.get('generator')}, "
                          f"but KBLOOP_GENERATOR is {settings.generator}")
    new_versions = knowledge_new_to(registry, lineage, kb)
    own = kb.home.eval_questions(settings)
    files = ([own] if own else []) + [f for f in user_files or [] if not own or f.resolve() != own.resolve()]
    items = build_evalset(kb, new_versions, files, max_items or settings.eval_max_items, settings.eval_old_share,
                          with_feedback=use_judge)
    started = time.time()
    k = settings.retrieve_k
    ranks = retrieval_ranks(kb, items, k)
    sides = {"candidate": (cand, registry.path(cand)),
             "baseline": (base, registry.path(base) if base else None)}
    answers = {side: answer_all(kb, path, items, progress, name or "base") for side, (name, path) in sides.items()}

    judge = None
    pairwise = {"wins": 0, "losses": 0, "ties": 0, "inconsistent": 0}
    if use_judge:
        judge = Judge(kb.model("judge"), JudgeCache(kb.manifest.db))
        answerable = [i for i in items if i.answerable]
        for item in progress_bar(answerable, show=progress, desc="judge", unit="q"):
            for side in sides:
                got = answers[side][item.id]
                verdict = judge.score(item.question, got["answer"], item.reference, got["sources"])
                got["verdict"], got["judge_norm"] = verdict, judge_norm(verdict)
            if settings.eval_pairwise:
                pref = judge.prefer(item.question, item.reference, answers["candidate"][item.id]["answer"],
                                    answers["baseline"][item.id]["answer"])
                key = {"first": "wins", "second": "losses", "tie": "ties", None: "inconsistent"}[pref]
                pairwise[key] += 1
                answers["candidate"][item.id]["pairwise"] = pref

    metrics = {side: side_metrics(items, answers[side], ranks, k) for side in sides}
    decision = decide(metrics["candidate"], metrics["baseline"], settings.gate_tolerance)
    run = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{cand}"
    report = EvalReport(
        run=run, created_at=started, seconds=round(time.time() - started, 1),
        candidate=cand, baseline=base or "base", generator=settings.generator,
        judge=judge.spec if judge else None,
        judge_calls=judge.calls if judge else 0, judge_cache_hits=judge.cache_hits if judge else 0,
        judge_failures=judge.failures if judge else 0,
        items=len(items), slices={s: sum(1 for i in items if i.slice == s) for s in SLICES if s != "all"},
        metrics=metrics, pairwise=pairwise if judge and settings.eval_pairwise else None,
        decision=decision,
        details=[item.as_dict() | {"retrieval_rank": ranks.get(item.id),
                                   "candidate": _public(answers["candidate"][item.id]),
                                   "baseline": _public(answers["baseline"][item.id])} for item in items],
    )
    store = EvaluationStore(kb.home, kb.manifest.db)
    report.folder = str(write_report(store, report))
    _record(store, registry, report)
    if promote and decision.decision == "accept":
        # Only over what was current when the run began: a promotion or rollback made by
        # another process meanwhile is refused here (CurrentChanged), never silently overwritten.
        registry.promote(cand, f"evaluation {run}: accepted against {base or 'base'}", expected_current=was_current)
        report.promoted = True
    return report


def _public(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "sources"}


def _record(store: EvaluationStore, registry: AdapterRegistry, report: EvalReport) -> None:
    """The run in the evaluations table, and its score and decision in the candidate's lineage."""
    store.record(report)
    lineage = registry.lineage(report.candidate)
    evaluations = lineage.get("evaluations", []) + [{
        "run": report.run, "baseline": report.baseline, "at": report.created_at,
        "score": report.score("candidate"), "baseline_score": report.score("baseline"),
        "decision": report.decision.decision,
    }]
    registry.update_lineage(report.candidate, evaluations=evaluations,
                            gate=report.decision.as_dict() | {"run": report.run, "baseline": report.baseline})
