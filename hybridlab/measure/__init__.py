"""Measurement: validation loss and KL, lm-eval tasks, latency and memory."""
