"""A run's network for the report (trained, or as initialized before training) and the
features and predictions it gives for a set of images, SA's aligned subspace included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def adapt_network(run: Path, config: dict[str, Any], classes: int, trained: bool = True):
    from transferkit.methods import trained_method
    from transferkit.models.classifier import network_of_run

    if trained:
        from transferkit.api import method_of_run

        return method_of_run(run, config, classes).network.eval()
    torch.manual_seed(config.get("seed", 0))  # the initial weights the run started from
    network = network_of_run(config, classes, initial=True)
    # the method may reshape the network (CDAN widens the domain classifier's input)
    trained_method(config["method"])(network)
    return network.eval()


@torch.inference_mode()
def features_and_predictions(network: Any, images: torch.Tensor, pair: Any) -> tuple[np.ndarray, np.ndarray]:
    features, predictions = [], []
    for start in range(0, len(images), 512):
        x = pair.normalize(images[start : start + 512])
        f = network.features(x)
        features.append(f.numpy())
        predictions.append(network.label_predictor(f).argmax(1).numpy())
    return np.concatenate(features), np.concatenate(predictions)


def aligned_and_predictions(
    network: Any, alignment: Any, images: torch.Tensor, pair: Any, domain: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SA's view of ``images``: their coordinates in the aligned subspace and SA's classes.
    ``domain`` (0 source, 1 target per image; default all target) says how each is projected."""
    from transferkit.methods import SourceOnly
    from transferkit.training.loop import run_batches

    hidden = run_batches(SourceOnly(network), images, pair, output="hidden").numpy()
    domain = np.ones(len(hidden), dtype=int) if domain is None else domain
    projected = np.empty((len(hidden), alignment.selected_dimension))
    classes = np.empty(len(hidden), dtype=np.int64)
    for value, side in ((0, "source"), (1, "target")):
        rows = domain == value
        if rows.any():
            projected[rows] = alignment.project(hidden[rows], side)
            classes[rows] = alignment.predict(hidden[rows], side)
    return projected, classes
