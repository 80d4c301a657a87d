"""Evaluation: answer and retrieval metrics (the judge and the promotion gate build on them)."""
