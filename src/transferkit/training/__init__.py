"""The one training loop every method shares, its schedules, checkpoints and devices, and the
frozen prefix's outputs cached on disk (:mod:`activations`)."""

from transferkit.training.loop import TrainConfig, evaluate, fit
from transferkit.training.schedules import annealed_learning_rate, grl_coefficient

__all__ = ["TrainConfig", "annealed_learning_rate", "evaluate", "fit", "grl_coefficient"]
