"""Subspace Alignment (Fernando, Habrard, Sebban & Tuytelaars, ICCV 2013).

Each domain's features are z-scored with its own statistics; X_S and X_T are the top-d PCA
bases (D×d) of source and target. The source basis is aligned onto the target's by

    M = X_Sᵀ X_T,   X_a = X_S M          (eq. 3-5 of the paper)

and a classifier is trained on source features projected by X_a, then applied to target
features projected by X_T (source data, at test time too, is projected by X_a).

The features are those the DANN paper's SA baseline aligns (Ganin et al. 2016, §5.2.1): the
activations of the last hidden layer of a source-only network's label predictor, before its
final linear classifier (:meth:`transferkit.models.DigitNetwork.hidden`).

The subspace size d ranges over the paper's {2, …, 60}. The paper picked it "so that the test
performance on the target domain is maximized" — an oracle choice. Here it is chosen without
target labels: the candidate with the best accuracy on held-out *source* data (projected the
same way as the training source data). :meth:`SubspaceAlignment.accuracy_by_dimension` gives
every candidate's accuracy on a labelled set, so a report can show the paper's oracle choice
beside the honest one, labelled as such.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

PAPER_DIMENSIONS = tuple(range(2, 61))  # "{2, . . . , 60}", Ganin et al. 2016, §5.2.1
DOMAINS = ("source", "target")
# What SA aligns, recorded in a run's config: runs that aligned another layer are other runs.
SA_FEATURES = "label_predictor_last_hidden"


def _standardize(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), features.std(0) + 1e-6


@dataclass
class SubspaceAlignment:
    candidate_dimensions: tuple[int, ...] = PAPER_DIMENSIONS
    regularization: float = 1.0
    max_iter: int = 500  # of the logistic regression's solver
    seed: int = 0
    selected_dimension: int | None = None
    validation_accuracy: dict[int, float] = field(default_factory=dict)
    not_converged: list[int] = field(default_factory=list)  # sizes whose fit hit max_iter

    def fit(self, source: np.ndarray, labels: np.ndarray, target: np.ndarray,
            source_val: np.ndarray, source_val_labels: np.ndarray) -> SubspaceAlignment:
        self.validation_accuracy, self.not_converged = {}, []
        self._source_stats = _standardize(source)
        self._target_stats = _standardize(target)
        source_z = self._z(source, "source")
        target_z = self._z(target, "target")
        val_z = self._z(source_val, "source")
        limit = min(source.shape[1], len(source), len(target))
        dimensions = [d for d in self.candidate_dimensions if d <= limit] or [limit]
        source_basis_full = PCA(max(dimensions), random_state=self.seed).fit(source_z).components_.T
        target_basis_full = PCA(max(dimensions), random_state=self.seed).fit(target_z).components_.T
        # per size d: (source projection X_a = X_S M, target projection X_T, classifier)
        self._fitted: dict[int, tuple[np.ndarray, np.ndarray, LogisticRegression]] = {}
        for d in dimensions:
            source_basis, target_basis = source_basis_full[:, :d], target_basis_full[:, :d]
            aligned = source_basis @ (source_basis.T @ target_basis)
            classifier = LogisticRegression(C=self.regularization, max_iter=self.max_iter)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                classifier.fit(source_z @ aligned, labels)
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                self.not_converged.append(d)
            self._fitted[d] = (aligned, target_basis, classifier)
            self.validation_accuracy[d] = float(classifier.score(val_z @ aligned,
                                                                 source_val_labels))
        if self.not_converged:  # one warning, not one per size
            warnings.warn(f"Subspace Alignment: the logistic regression stopped at its "
                          f"iteration limit for sizes {self.not_converged} (kept as they are)",
                          ConvergenceWarning, stacklevel=2)
        # the best source-validation accuracy; the smaller size on a tie
        self.selected_dimension = max(dimensions, key=lambda d: (self.validation_accuracy[d], -d))
        return self

    def _z(self, features: np.ndarray, domain: str) -> np.ndarray:
        if domain not in DOMAINS:
            raise ValueError(f"domain {domain!r}: expected one of {', '.join(DOMAINS)}")
        mean, std = self._source_stats if domain == "source" else self._target_stats
        return (features - mean) / std

    def predict(self, features: np.ndarray, domain: str = "target",
                dimension: int | None = None) -> np.ndarray:
        """Classes of ``features`` from ``domain`` (see :meth:`project`). ``dimension``
        (default: the selected one) must be a fitted candidate."""
        projected = self.project(features, domain, dimension)
        d = self.selected_dimension if dimension is None else dimension
        return self._fitted[d][2].predict(projected)

    def project(self, features: np.ndarray, domain: str = "target",
                dimension: int | None = None) -> np.ndarray:
        """``features`` of ``domain`` in the aligned d-dimensional space the classifier reads:
        target data by X_T, source data by X_a."""
        if self.selected_dimension is None:
            raise RuntimeError("call fit before project or predict")
        d = self.selected_dimension if dimension is None else dimension
        if d not in self._fitted:
            raise ValueError(f"dimension {d}: not fitted (candidates {sorted(self._fitted)})")
        aligned, target_basis, _ = self._fitted[d]
        return self._z(features, domain) @ (target_basis if domain == "target" else aligned)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The selected size's alignment as arrays, enough to predict without refitting (a
        refit on another thread count can differ where a fit stopped at its iteration limit)."""
        if self.selected_dimension is None:
            raise RuntimeError("call fit before state_dict")
        aligned, target_basis, classifier = self._fitted[self.selected_dimension]
        state = {"source_mean": self._source_stats[0], "source_std": self._source_stats[1],
                 "target_mean": self._target_stats[0], "target_std": self._target_stats[1],
                 "aligned": aligned, "target_basis": target_basis,
                 "coef": classifier.coef_, "intercept": classifier.intercept_,
                 "classes": classifier.classes_}
        return {name: np.ascontiguousarray(array) for name, array in state.items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> SubspaceAlignment:
        """An alignment that predicts as the saved one did, at its selected size."""
        d = state["aligned"].shape[1]
        alignment = cls(candidate_dimensions=(d,), selected_dimension=d)
        alignment._source_stats = (state["source_mean"], state["source_std"])
        alignment._target_stats = (state["target_mean"], state["target_std"])
        classifier = LogisticRegression()  # fitted already: its weights, read back
        classifier.coef_, classifier.intercept_ = state["coef"], state["intercept"]
        classifier.classes_ = state["classes"]
        alignment._fitted = {d: (state["aligned"], state["target_basis"], classifier)}
        return alignment

    def accuracy_by_dimension(self, features: np.ndarray, labels: np.ndarray,
                              domain: str = "target") -> dict[int, float]:
        """Accuracy of every fitted candidate size on labelled ``features`` of ``domain``. On
        target-test data this is the paper's oracle view of d — for reporting, never for
        choosing the model."""
        return {d: float((self.predict(features, domain, d) == labels).mean())
                for d in sorted(self._fitted)}
