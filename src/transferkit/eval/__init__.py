"""Evaluation: task metrics (and, later, forgetting)."""
