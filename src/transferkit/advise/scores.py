"""How well a network's features (or its outputs) suit a labelled target task, without
training on it: LogME, LEEP, H-score; and how far apart two domains are: proxy A-distance.

All take NumPy arrays: features ``n×d``, integer labels ``n``, or source-class probabilities
``n×z``. Higher LogME/LEEP/H-score means a better expected fine-tuning result; a proxy
A-distance near 0 means the domains are indistinguishable, near 2 fully separable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(f"expected features n×d and labels n, got {features.shape} and {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("need at least two classes")
    return features, labels.astype(np.int64)


@dataclass
class Evidence:
    log_evidence: float  # per sample
    alpha: float
    beta: float


def evidence_for_target(
    sigma: np.ndarray,
    u_t_y: np.ndarray,
    y: np.ndarray,
    n: int,
    d: int,
    iterations: int = 100,
    tol: float = 1e-5,
) -> Evidence:
    """Maximize the evidence of Bayesian linear regression ``y = F w + ε``, ``w ~ N(0, α⁻¹I)``,
    ``ε ~ N(0, β⁻¹)``, over α and β by MacKay's fixed point (You et al. 2021, Algorithm 1).

    ``sigma`` are the eigenvalues of FᵀF (squared singular values, zeros included up to d),
    ``u_t_y`` the projections of y on the left singular vectors.
    """
    alpha, beta = 1.0, 1.0
    y_norm2 = float(y @ y)
    z2 = u_t_y**2
    residual_outside = max(y_norm2 - float(z2.sum()), 0.0)  # part of y outside F's column space
    for _ in range(iterations):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        m2 = float((beta**2 * sigma * z2[: len(sigma)] / (alpha + beta * sigma) ** 2).sum())
        res2 = float((alpha**2 * z2[: len(sigma)] / (alpha + beta * sigma) ** 2).sum()) + residual_outside
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m2 = float((beta**2 * sigma * z2[: len(sigma)] / (alpha + beta * sigma) ** 2).sum())
    res2 = float((alpha**2 * z2[: len(sigma)] / (alpha + beta * sigma) ** 2).sum()) + residual_outside
    log_det_a = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - log_det_a / 2
    )
    return Evidence(evidence / n, alpha, beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the mean over classes of the maximized log evidence per
    sample of a linear model from features to the class's one-hot column."""
    features, labels = _check(features, labels)
    n, d = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma = s**2
    if len(sigma) < d:
        sigma = np.concatenate([sigma, np.zeros(d - len(sigma))])
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        projection = u.T @ y
        padded = np.concatenate([projection, np.zeros(max(0, d - len(projection)))])
        scores.append(evidence_for_target(sigma, padded, y, n, d).log_evidence)
    return float(np.mean(scores))


def direct_log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ) / n computed from the n×n covariance (slow; for checks)."""
    features = np.asarray(features, dtype=np.float64)
    n = len(y)
    covariance = np.eye(n) / beta + features @ features.T / alpha
    sign, log_det = np.linalg.slogdet(covariance)
    assert sign > 0
    quadratic = float(y @ np.linalg.solve(covariance, y))
    return (-0.5 * (n * math.log(2 * math.pi) + log_det + quadratic)) / n


def leep(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020): the mean log-likelihood of the target labels under the
    "expected empirical predictor" built from the source model's class probabilities."""
    theta = np.asarray(source_probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if theta.ndim != 2 or len(theta) != len(labels):
        raise ValueError(f"expected probabilities n×z and labels n, got {theta.shape} and {labels.shape}")
    n = len(labels)
    classes = int(labels.max()) + 1
    joint = np.zeros((classes, theta.shape[1]))
    np.add.at(joint, labels, theta)
    joint /= n
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    likelihood = (theta * conditional[labels]).sum(axis=1)
    return float(np.log(np.maximum(likelihood, 1e-300)).mean())


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score (Bao et al., 2019): tr(cov(f)⁻¹ cov(E[f | y])). With ``shrinkage`` the feature
    covariance is Ledoit–Wolf shrunk (Ibrahim et al., 2022), which keeps the score meaningful
    when features outnumber samples."""
    features, labels = _check(features, labels)
    features = features - features.mean(axis=0)
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        covariance = LedoitWolf(assume_centered=True).fit(features).covariance_
    else:
        covariance = np.cov(features, rowvar=False)
    class_means = np.zeros_like(features)
    for c in np.unique(labels):
        mask = labels == c
        class_means[mask] = features[mask].mean(axis=0)
    between = np.cov(class_means, rowvar=False)
    return float(np.trace(np.linalg.pinv(covariance, rcond=1e-10) @ between))


@dataclass
class DomainGap:
    proxy_a_distance: float
    domain_error: float
    samples_per_domain: int


def proxy_a_distance(source: np.ndarray, target: np.ndarray, samples: int = 2000, seed: int = 0) -> DomainGap:
    """2(1 − 2ε), ε the held-out error of a linear classifier told to separate the two domains
    (Ben-David et al. 2007; Ganin et al. 2016 §5.1.3 use it with a linear SVM). Equal samples
    from each domain, half for training the classifier and half for measuring ε; the
    regularization strength is chosen by 3-fold cross-validation on the training half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    k = min(samples, len(source), len(target))
    a = np.asarray(source, dtype=np.float32).reshape(len(source), -1)[
        rng.choice(len(source), k, replace=False)
    ]
    b = np.asarray(target, dtype=np.float32).reshape(len(target), -1)[
        rng.choice(len(target), k, replace=False)
    ]
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(k), np.ones(k)])
    order = rng.permutation(2 * k)
    x, y = x[order], y[order]
    half = k
    fewest = int(np.bincount(y[:half].astype(int), minlength=2).min())
    if fewest < 2:  # cross-validation needs two of each domain in the training half
        from transferkit.errors import TransferkitError

        raise TransferkitError(f"too few images to measure the domain gap ({k} per domain; it "
                               "takes at least 4 of each)")
    scaler = StandardScaler().fit(x[:half])
    folds = min(3, fewest)  # 3 whenever there are enough images: the measure as it always was
    classifier = GridSearchCV(LogisticRegression(max_iter=2000), {"C": [0.001, 0.01, 0.1, 1.0]},
                              cv=folds)
    classifier.fit(scaler.transform(x[:half]), y[:half])
    error = float((classifier.predict(scaler.transform(x[half:])) != y[half:]).mean())
    error = min(error, 0.5)
    return DomainGap(2 * (1 - 2 * error), error, k)
