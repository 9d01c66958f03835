"""Text output: the memory plan and the advice (later: comparison tables, plots, the run report)."""
