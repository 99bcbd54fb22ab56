"""Label-free validators: scores of an adapted model computed from its predictions on
unlabelled target images (and the source's labels), never from target labels. Higher is better
for every one of them, so any of them can choose among epochs, settings or methods of one pair.

- ``snd``, soft neighborhood density (Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune
  it the Right Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood
  Density", ICCV 2021): each target image's similarity to every other (cosine of their class
  probability vectors), softmax at temperature 0.05 over the others, and the mean entropy of
  those rows. High when target images sit in dense clusters of like predictions, which is what
  a good adapted model makes of a target with real class structure.
- ``im``, information maximization (Gomes, Krause & Perona, NeurIPS 2010; the objective of
  SHOT, Liang et al. 2020): H(mean p) − mean H(p), high when predictions are confident
  *and* spread over the classes.
- ``entropy``: −mean H(p), confidence alone (Morerio et al., "Minimal-Entropy Correlation
  Alignment", ICLR 2018 use it for selection); blind to a collapse into one class.
- ``class_shares``: 1 − the total-variation distance between the target's predicted class
  shares and the source's label shares (the label-free check of :mod:`transferkit.checks`
  as a score); blind to errors that keep the shares.

Which one to trust is measured, not assumed: ``benchmarks/validator_study.py`` ranks candidate
models of a development pair whose target labels may be looked at, and reports each
validator's Spearman ρ with target accuracy and the accuracy its pick loses against the best
candidate (``benchmarks/results/validators.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from transferkit.names import SELECTOR_NAMES

SND_TEMPERATURE = 0.05  # Saito et al. 2021's τ
SAMPLE = 5000  # target images a score is computed on (SND is quadratic in their number)


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=-1)


def soft_neighborhood_density(probabilities: torch.Tensor,
                              temperature: float = SND_TEMPERATURE) -> float:
    """SND of N × C class probabilities (N ≥ 2): the mean entropy of each image's softmax
    over its cosine similarities to the other N − 1 images, at ``temperature``."""
    if probabilities.ndim != 2 or len(probabilities) < 2:
        raise ValueError(f"probabilities of shape {tuple(probabilities.shape)}: expected N × C, N ≥ 2")
    unit = F.normalize(probabilities.double(), dim=1)
    similarity = unit @ unit.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # an image is not its own neighbor
    neighbors = F.softmax(similarity, dim=1)
    return float(_entropy(neighbors).mean())


def information_maximization(probabilities: torch.Tensor) -> float:
    """H(mean p) − mean H(p) of N × C class probabilities: at most log C."""
    probabilities = probabilities.double()
    return float(_entropy(probabilities.mean(dim=0)) - _entropy(probabilities).mean())


def negative_entropy(probabilities: torch.Tensor) -> float:
    """−mean H(p): 0 for certain predictions, −log C for uniform ones."""
    return float(-_entropy(probabilities.double()).mean())


def class_share_agreement(probabilities: torch.Tensor, source_labels: torch.Tensor) -> float:
    """1 − TV(predicted target class shares, source label shares), in [0, 1]."""
    classes = probabilities.shape[1]
    predicted = torch.bincount(probabilities.argmax(dim=1), minlength=classes).double()
    source = torch.bincount(source_labels.long().cpu(), minlength=classes).double()
    predicted, source = predicted / predicted.sum(), source / source.sum()
    return float(1.0 - 0.5 * (predicted - source.to(predicted.device)).abs().sum())


VALIDATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "snd": lambda p, labels: soft_neighborhood_density(p),
    "im": lambda p, labels: information_maximization(p),
    "entropy": lambda p, labels: negative_entropy(p),
    "class_shares": class_share_agreement,
}


def sample_indices(count: int, limit: int = SAMPLE, seed: int = 0) -> torch.Tensor:
    """The same ``limit`` of ``count`` indices for every candidate scored (sorted)."""
    if count <= limit:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:limit].sort().values


def label_free_scores(probabilities: torch.Tensor, source_labels: torch.Tensor,
                      names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Every validator (or ``names``) on one model's target class probabilities."""
    chosen = names or tuple(VALIDATORS)
    unknown = [n for n in chosen if n not in VALIDATORS]
    if unknown:
        raise ValueError(f"unknown validator {unknown[0]!r}: expected one of {', '.join(VALIDATORS)}")
    return {name: VALIDATORS[name](probabilities, source_labels) for name in chosen}


SELECTORS = SELECTOR_NAMES  # the validators, and source_accuracy: the source test split's


def model_scores(method, pair, images: torch.Tensor, names: tuple[str, ...] = SELECTOR_NAMES,
                 ) -> dict[str, float]:
    """``names`` (validators, and ``source_accuracy``) of ``method`` in inference mode: the
    validators on its class probabilities for ``images`` (unlabeled target images), source
    accuracy on the pair's source test split (left out where the source has none: SYN SIGNS).
    The one scoring of ``choose_epoch`` and the validator study."""
    from transferkit.training.loop import evaluate, run_batches

    scores: dict[str, float] = {}
    validators = tuple(n for n in names if n != "source_accuracy")
    if validators:
        with torch.no_grad():
            probabilities = torch.softmax(run_batches(method, images, pair).float(), dim=1)
        scores = label_free_scores(probabilities, pair.source_train.labels, validators)
    if "source_accuracy" in names and pair.source_test is not None:
        scores["source_accuracy"] = evaluate(method, pair.source_test, pair)
    return scores


def choose_epoch(method, pair, folder, validator: str, sample: int = SAMPLE,
                 ) -> tuple[int, dict[int, float]]:
    """The kept epoch (``folder/epoch-K.safetensors``, see ``keep_epochs`` of
    :func:`transferkit.training.loop.fit`) whose model ``validator`` scores highest (ties: the
    later epoch), and every epoch's score. Leaves ``method`` holding the chosen epoch's weights.
    Reads no target label: validators score predictions on a fixed sample of the target's
    training images; ``source_accuracy`` is the accuracy on the source test split."""
    from pathlib import Path

    from safetensors.torch import load_file

    from transferkit.errors import TransferkitError
    if validator not in SELECTORS:
        raise TransferkitError(f"--select {validator}: expected one of last, {', '.join(SELECTORS)}")
    if validator == "source_accuracy" and pair.source_test is None:
        raise TransferkitError("--select source_accuracy: the source has no test split to score")
    kept = {int(p.stem.split("-")[1]): p for p in Path(folder).glob("epoch-*.safetensors")}
    if not kept:
        raise TransferkitError(f"{folder}: no kept epochs to choose among (expected "
                               "epoch-K.safetensors files)")
    images = pair.target_train.images[sample_indices(len(pair.target_train.images), sample)]
    scores: dict[int, float] = {}
    was_training = method.training
    method.eval()
    for epoch in sorted(kept):
        method.load_state_dict(load_file(str(kept[epoch])))
        scores[epoch] = model_scores(method, pair, images, (validator,))[validator]
    chosen = max(scores, key=lambda k: (scores[k], k))
    method.load_state_dict(load_file(str(kept[chosen])))
    method.train(was_training)
    return chosen, scores
