"""The home database's schema: every store's migrations, in the order they were numbered.

Each list lives beside the store that owns its tables; this is the one place that names them
all, so the order in which a new home's database is made is written down once. The knowledge
base opens its database with these.
"""

from __future__ import annotations

from kbloop.dataset import store as datasets
from kbloop.db import Migration
from kbloop.evaluate import feedback
from kbloop.evaluate import store as evaluations
from kbloop.ingest import manifest

# Sorted by their numbers: a store's later migration (006) runs after the others' earlier ones.
MIGRATIONS: list[Migration] = sorted([
    *manifest.MIGRATIONS,     # 001 files, chunks, runs, meta; 002 the keyword index;
                              # 008 vector ids never reused; 009 each file's chunking
    *datasets.MIGRATIONS,     # 003 dataset versions and records
    *feedback.MIGRATIONS,     # 004 ratings of answers; 006 users' corrections
    *evaluations.MIGRATIONS,  # 005 judge verdicts and evaluation runs
])
