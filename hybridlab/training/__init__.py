"""Training on one loop: the trainer, checkpoints, torchrun, logit distillation, the teacher logits
cache, and language-model pretraining (the demo teacher, from-scratch baselines)."""
