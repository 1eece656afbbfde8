"""Importance (activations, whole layers), the kept-units rule, and structured pruning."""
