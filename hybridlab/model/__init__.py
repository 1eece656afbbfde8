"""What a model is and what a plan makes of it, from its config alone: loading and saving, the prune
spec, exact sizes, published reference architectures. Builds on hybridlab.families."""
