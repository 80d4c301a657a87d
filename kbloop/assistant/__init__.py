"""Answering questions: retrieval, the grounded prompt, generation with citations, refusal."""
