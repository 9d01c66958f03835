"""Planning before training: what a model needs in memory (from its config alone), the cheapest
change that makes a run fit a budget, and which regimes suit the data."""
