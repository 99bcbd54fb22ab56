"""Choosing among adapted models without target labels: reverse validation.

Target labels are what unsupervised domain adaptation does not have, so they cannot choose
its hyper-parameters, epochs or checkpoints. Reverse validation (Zhong et al. 2010, "Cross
Validation Framework to Choose amongst Models and Datasets for Transfer Learning"; the model
selection Ganin et al. 2016 use for DANN) turns the problem around:

1. the adapted model labels the target training images (pseudo-labels);
2. the same method, with the same hyper-parameters, adapts *back*: the pseudo-labelled target
   images are its labelled source, the source images without their labels its target;
3. the reverse model's accuracy on labelled source data it never trained on is the score.

A model whose target labels are wrong, or whose features only fit the forward direction,
gives a reverse model that fails on the source; the score needs no target label. Higher is
better; compare candidates of one pair with it, never across pairs.

The scored source data is the pair's source test split where there is one, else a held-out
tenth of the source training images (which the reverse run then does not see).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from transferkit.data.pairs import DomainPair, DomainSplit, held_out_tenth
from transferkit.errors import TransferkitError
from transferkit.training.runfolder import write_error, write_json, write_text

if TYPE_CHECKING:
    from transferkit.api import DomainAdapter

RESULT_FILE = "reverse_validation.json"
REVERSE_RUN = "reverse_validation"


def reverse_pair(pair: DomainPair, pseudo_labels: torch.Tensor, seed: int = 0) -> DomainPair:
    """The pair read backwards: pseudo-labelled target → unlabelled source, scored on source.

    The reverse pair has no target-test split of the forward pair in it: its ``target_test``
    is labelled *source* data (the source test split, or a held-out tenth of source train).
    """
    if len(pseudo_labels) != len(pair.target_train):
        raise ValueError(f"{len(pseudo_labels)} pseudo-labels for "
                         f"{len(pair.target_train)} target training images")
    source = pair.source_train
    if pair.source_test is not None:
        unlabelled, scored = source, pair.source_test
    else:
        kept, held = (torch.from_numpy(i) for i in held_out_tenth(len(source), seed))
        unlabelled = DomainSplit(source.images[kept], source.labels[kept])
        scored = DomainSplit(source.images[held], source.labels[held])
    # The reverse run's target labels are the source's: only an oracle method would read
    # them, and reverse_validation refuses oracle methods.
    return DomainPair(
        source=f"{pair.target} (pseudo-labelled)", target=pair.source, classes=pair.classes,
        source_train=DomainSplit(pair.target_train.images, pseudo_labels.to(torch.int64).cpu(),
                                 pair.target_train.path),
        source_test=None, target_train=unlabelled, target_test=scored, mean=pair.mean, std=pair.std,
    )


def reverse_validation(adapter: DomainAdapter, epochs: int | None = None,
                       run_dir: str | Path | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Reverse-validation score of a fitted :class:`~transferkit.api.DomainAdapter`.

    The reverse run repeats the adapter's method and hyper-parameters (network, batch size,
    learning rate, weight average, seed) for ``epochs`` (default: the adapter's own).
    ``run_dir`` keeps the reverse run (checkpoints, so an interrupted one resumes) and
    ``reverse_validation.json`` beside it. Returns the record written there.
    """
    from transferkit.api import DomainAdapter

    adapter._check_fitted()
    if adapter.method == "target_only":
        raise TransferkitError("reverse validation scores adaptation without target labels; "
                               "target_only (the oracle) trains on them")
    started = time.perf_counter()
    pair = adapter.pair_
    pseudo = adapter.predict(pair.target_train.images)
    backwards = reverse_pair(pair, pseudo, adapter.config.seed)
    config = adapter.config
    if run_dir is not None:
        _check_same_pseudo_labels(Path(run_dir) / REVERSE_RUN, pseudo)
    reverse = DomainAdapter(
        method=adapter.method, network=adapter.network, image_size=pair.image_size,
        epochs=epochs or config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, steps_per_epoch=config.steps_per_epoch,
        seed=config.seed, device=config.device,
        run_dir=Path(run_dir) / REVERSE_RUN if run_dir is not None else None,
        ema_decay=adapter.ema_decay, progress=progress, backbone=adapter.backbone,
        weights=adapter.weights, unfreeze=adapter.unfreeze, bottleneck=adapter.bottleneck,
        input_norm=adapter.input_norm,
    ).fit(backwards)
    counts = torch.bincount(pseudo, minlength=len(pair.classes)).tolist()
    record = {
        "score": reverse.score("target_test"),
        "scored_on": ("source test split" if pair.source_test is not None
                      else "a held-out tenth of the source training images"),
        "scored_images": len(backwards.target_test),
        "method": adapter.method,
        "source": pair.source,
        "target": pair.target,
        "seed": config.seed,
        "reverse_epochs": reverse.config.epochs,
        "pseudo_label_counts": dict(zip(pair.classes, counts, strict=True)),
        "wall_seconds": time.perf_counter() - started,
    }
    if run_dir is not None:
        write_json(Path(run_dir) / RESULT_FILE, record)
    return record


def _check_same_pseudo_labels(reverse_dir: Path, pseudo: torch.Tensor) -> None:
    """A reverse run resumes only on the pseudo-labels it started with: another forward model
    in the same folder must not continue it."""
    digest = hashlib.sha256(pseudo.to(torch.int64).cpu().numpy().tobytes()).hexdigest()
    path = reverse_dir / "pseudo_labels.sha256"
    if path.is_file() and path.read_text().strip() != digest:
        raise TransferkitError(f"{reverse_dir} holds a reverse run made from other "
                               "pseudo-labels (the model changed): remove that folder to start "
                               "again")
    try:
        reverse_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(reverse_dir, exc) from None
    write_text(path, digest + "\n")
