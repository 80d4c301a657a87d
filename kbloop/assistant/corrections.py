"""Users' corrections as sources: a corrected question is answered from the correction at once.

A thumbs-down that carries the right answer teaches the adapter at the next learn cycle (see
``kbloop.dataset.corrections``). Until then, and whatever the training learns, the assistant
reads the correction itself: when a question asks what a user corrected, that is when its
embedding is within ``KBLOOP_CORRECTION_MATCH`` cosine similarity of the corrected question's,
or of one of the other phrasings of it that a dataset build wrote and kept for training, the
correction is put in front of the model as one more source, first in rank and cited like any
other. Several corrections of the same question: the closest wins, and of equally close
ones the newest, so a user who corrects a correction is heard.

Only questions that ask the same thing should match. The threshold was calibrated on both
development corpora (docs/answers.md): over every pair of their benchmark questions closer than
0.70, labelled by whether they ask for the same fact, 0.85 is the lowest that lets no pair of
different questions match. It matches about half of the paraphrases; lower ones need a model that
can tell near-miss questions apart, which the packaged judge could not (it said "same" to every
pair or to too few, depending on the prompt). Evaluations and training records leave corrections
out (``Assistant(..., corrections=False)``), so that the gate measures what the adapter learned,
not what it was shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from kbloop.ingest.manifest import Hit

if TYPE_CHECKING:
    from kbloop.evaluate.feedback import Feedback

# The source's heading, as the model reads it. Headed "A user's correction", the correction was
# passed over for the documents' text (the credential helper's "!" on kbdev); said to answer
# this question, it was used on both corpora (docs/answers.md).
TITLE = "A user's answer to this question"


def correction_hit(rating: Feedback, score: float) -> Hit:
    """A correction as a source: the user's answer. The question it answers is kept beside it
    (``corrected_question``) but not shown to the model: given the question in the heading
    right above the answer, the small default model copied the question instead of answering.
    Its id is negative, so it never meets a chunk's."""
    return Hit(-rating.id, score, f"correction #{rating.id}", rating.correction or "",
               {"title": TITLE, "corrected_question": rating.question, "correction": rating.id})


class CorrectionIndex:
    """The corrected questions' embeddings, and those of the other phrasings of them that
    training kept, each made once and kept while the knowledge base is open (a server's, for
    all its requests)."""

    def __init__(self, kb: Any, phrasings: Callable[[list[int]], dict[int, list[str]]] = lambda ids: {}):
        """``phrasings`` gives the kept phrasings of the corrections of these rating ids, by id."""
        self.kb = kb
        self._phrasings = phrasings
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def best(self, question: str, threshold: float) -> Hit | None:
        """The correction of a question that asks what ``question`` asks, or None. A correction
        matches through the question as the user asked it or through any phrasing of it that a
        dataset build kept (``kbloop.dataset.corrections``): those were checked to ask the same
        thing, so a paraphrase worded far from the question asked can still be close to one."""
        ratings = self.kb.feedback.corrections()
        if not ratings:
            return None
        phrasings = self._phrasings([r.id for r in ratings])
        asked = [(r, text) for r in ratings for text in dict.fromkeys([r.question, *phrasings.get(r.id, [])])]
        with self._lock:
            new = list(dict.fromkeys(text for _, text in asked if text not in self._vectors))
            if new:
                vectors = self.kb.embedder.embed(new)
                self._vectors.update((text, np.asarray(v, dtype=np.float32)) for text, v in zip(new, vectors))
            query = np.asarray(self.kb.embedder.embed_query(question), dtype=np.float32)
            scored = [(round(float(self._vectors[text] @ query), 3), r.id, r) for r, text in asked]
        score, _, rating = max(scored, key=lambda s: s[:2])
        return correction_hit(rating, score) if score >= threshold else None
