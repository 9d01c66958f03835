"""Models: load a pre-trained backbone with a task head, and give it a backbone/head split."""
