"""Capacity Dynamic Distillation training: data, models, losses, gradient resetting, pruning."""
