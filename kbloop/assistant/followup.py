"""A chat's follow-up question, rewritten to stand on its own.

"Which hook does it run?" means nothing without the question before it. Retrieval reads a
follow-up together with the earlier question (``fold_query``), but the answering model is shown
the follow-up alone, so that nothing of an earlier answer reaches this one; a small model then
does not know what "it" is. With ``KBLOOP_REWRITE_FOLLOW_UPS`` the judge model, the strongest
one loaded, rewrites the follow-up from the two questions (never the earlier answer), and the
rewrite is what is searched and answered.

A rewrite is taken only when it adds to the follow-up nothing but words of the earlier
question (one other word at most, such as "module"; no number) and keeps the follow-up's own
words: a model that answers the question, or merges the two into one, is caught by its words.
Anything else, and a judge that cannot be reached, leaves the follow-up as the user wrote it.
"""

from __future__ import annotations

import logging

from kbloop.errors import BackendUnavailable
from kbloop.text import numbers, word_stems

log = logging.getLogger(__name__)

SYSTEM = ("You rewrite a follow-up question so that it can be read without the conversation. Replace words "
          "such as \"it\", \"its\", \"that\" and \"they\" with the name they refer to in the earlier "
          "question, keep every other word, and do not answer. Reply with the rewritten question only.")
PROMPT = "Earlier question: {earlier}\nFollow-up question: {question}"
# Two worked examples, on no manual in particular: small models copy the earlier question or
# merge the two when told what to do without being shown.
EXAMPLES = [
    ("Which port does the frobnicate server listen on by default?", "And how do I change it?",
     "How do I change the port the frobnicate server listens on?"),
    ("What does the widget.cache_size setting control?", "Which unit is its value given in?",
     "Which unit is the value of widget.cache_size given in?"),
]
OTHER_WORDS = 1
"""Words a rewrite may add that the earlier question does not have ("module" for "zipfile")."""
MOST_ADDED = 4
"""Words a rewrite may add at most: a name and its qualifiers, not a second question."""


def accepted(rewrite: str, question: str, earlier: str) -> bool:
    """``rewrite`` says what ``question`` asks, its references filled in from ``earlier``:
    it keeps at least three quarters of the question's informative words, adds one to
    ``MOST_ADDED`` words, none but the earlier question's (``OTHER_WORDS`` aside), no number,
    and asks no more questions than it (two questions merged into one reply are not a rewrite)."""
    asked, said, before = word_stems(question), word_stems(rewrite), word_stems(earlier)
    added = said - asked
    kept = len(asked & said)
    return (0 < len(added) <= MOST_ADDED and len(added - before) <= OTHER_WORDS and 4 * kept >= 3 * len(asked)
            and numbers(rewrite) <= numbers(question) | numbers(earlier)
            and rewrite.count("?") <= max(question.count("?"), 1))


def standalone(model, question: str, earlier: str, max_new_tokens: int = 64) -> str | None:
    """The follow-up ``question`` rewritten by ``model`` to stand without ``earlier``; None when
    the rewrite is not ``accepted`` or the model cannot be reached."""
    messages = [{"role": "system", "content": SYSTEM}]
    for before, follow_up, rewritten in EXAMPLES:
        messages += [{"role": "user", "content": PROMPT.format(earlier=before, question=follow_up)},
                     {"role": "assistant", "content": rewritten}]
    messages.append({"role": "user", "content": PROMPT.format(earlier=earlier.strip(), question=question.strip())})
    try:
        reply = model.generate(messages, max_new_tokens=max_new_tokens, temperature=0.0)
    except BackendUnavailable as exc:
        log.warning("follow-up not rewritten: %s", exc)
        return None
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    rewrite = lines[0].strip("\"'` ") if lines else ""
    rewrite = rewrite.split(":", 1)[1].strip() if rewrite.lower().startswith(("rewritten", "question:")) else rewrite
    log.debug("follow-up %r rewritten as %r", question, rewrite)
    return rewrite if rewrite and accepted(rewrite, question, earlier) else None
