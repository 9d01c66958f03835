"""Measurements beyond the training loop: metrics from confusion matrices, label scoring with a causal LM
(cached prefix, calibration), greedy generation and exact match, and forgetting."""
