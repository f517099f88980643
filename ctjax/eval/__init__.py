"""Evaluation: metrics, key-slice interpretive tasks, diagnostic reports."""
