"""Text helpers shared by the assistant, datasets and evaluation: one copy of each.

Normalisation, stop words, content words, numbers and technical terms live here so that
"the same word" means the same thing to grounding checks, dataset filters and metrics.
"""

from __future__ import annotations

import re

# Exact technical terms a question can name: an option, a config key or file name, an
# environment variable, a shell variable. Embeddings blur these; keyword evidence does not.
TERM = re.compile(
    r"(?<![\w-])--?[a-z][\w-]+"              # --option, -x
    r"|\b[a-z][\w-]*(?:\.[a-z][\w-]*)+\b"    # config.keys and file.names
    r"|\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b"        # ENV_VARS
    r"|\$[A-Za-z_]\w*",                       # $VARIABLES
    re.IGNORECASE,
)


def technical_terms(text: str) -> list[str]:
    """The exact technical terms ``text`` names, lower-cased, sorted, each once."""
    return sorted({t.lower().rstrip(".") for t in TERM.findall(text)})
