"""Subspace Alignment (Fernando, Habrard, Sebban & Tuytelaars, ICCV 2013).

Each domain's features are z-scored with its own statistics; X_S and X_T are the top-d PCA
bases (D×d) of source and target. The source basis is aligned onto the target's by

    M = X_Sᵀ X_T,   X_a = X_S M          (eq. 3-5 of the paper)

and a classifier is trained on source features projected by X_a, then applied to target
features projected by X_T. Features here are those of a network's feature extractor (the
source-only network, as in the DANN paper's SA baseline on deep features).

The subspace size d is chosen without target labels: the candidate with the best accuracy on
held-out *source* data (projected the same way as the training source data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression


def _standardize(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), features.std(0) + 1e-6


@dataclass
class SubspaceAlignment:
    candidate_dimensions: tuple[int, ...] = (10, 20, 40, 80, 160)
    regularization: float = 1.0
    seed: int = 0
    selected_dimension: int | None = None
    validation_accuracy: dict[int, float] = field(default_factory=dict)

    def fit(self, source: np.ndarray, labels: np.ndarray, target: np.ndarray,
            source_val: np.ndarray, source_val_labels: np.ndarray) -> SubspaceAlignment:
        self._source_stats = _standardize(source)
        self._target_stats = _standardize(target)
        source_z = (source - self._source_stats[0]) / self._source_stats[1]
        target_z = (target - self._target_stats[0]) / self._target_stats[1]
        val_z = (source_val - self._source_stats[0]) / self._source_stats[1]
        limit = min(source.shape[1], len(source), len(target))
        dimensions = [d for d in self.candidate_dimensions if d <= limit] or [limit]
        source_basis_full = PCA(max(dimensions), random_state=self.seed).fit(source_z).components_.T
        target_basis_full = PCA(max(dimensions), random_state=self.seed).fit(target_z).components_.T
        best = None
        for d in dimensions:
            source_basis, target_basis = source_basis_full[:, :d], target_basis_full[:, :d]
            aligned = source_basis @ (source_basis.T @ target_basis)
            classifier = LogisticRegression(C=self.regularization, max_iter=500)
            classifier.fit(source_z @ aligned, labels)
            accuracy = float(classifier.score(val_z @ aligned, source_val_labels))
            self.validation_accuracy[d] = accuracy
            if best is None or accuracy > best[0]:
                best = (accuracy, d, classifier, target_basis)
        assert best is not None
        _, self.selected_dimension, self._classifier, self._target_basis = best
        return self

    def predict(self, target: np.ndarray) -> np.ndarray:
        target_z = (target - self._target_stats[0]) / self._target_stats[1]
        return self._classifier.predict(target_z @ self._target_basis)
