"""Answer metrics: normalised match (numbers whole, citations ignored) and token F1."""

from __future__ import annotations

import pytest

from kbloop.evaluate.metrics import matches, token_f1
from kbloop.text import normalise


@pytest.mark.parametrize("answer,refs,expected", [
    ("The default is 900 seconds [1].", ["900"], True),
    ("It is 9000.", ["900"], False),
    ("About 6,700 loose objects.", ["6700"], True),
    ("[1]", ["1"], False),                      # a citation mark is not the number 1
    ("See [2].", ["2"], False),
    ("Exit status 1 [1].", ["1"], True),
    ("Use `git worktree lock` [1].", ["git worktree lock"], True),
    ("It uses the sendemail-validate hook.", ["sendemail-validate"], True),
    ("It uses the post-receive hook.", ["sendemail-validate"], False),
])
def test_matches(answer, refs, expected):
    assert matches(answer, refs) is expected


def test_normalise_and_f1():
    assert normalise("  The `--timeout` Value!  ") == "the --timeout value"
    assert token_f1("the default is 900", "900") == pytest.approx(2 * (1 / 4) * 1 / (1 / 4 + 1))
    assert token_f1("", "") == 1.0 and token_f1("abc", "xyz") == 0.0
