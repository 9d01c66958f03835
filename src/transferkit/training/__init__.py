"""Training: the one loop, its optimizer set-up, and checkpoints."""
