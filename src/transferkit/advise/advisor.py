"""``transferkit advise``: should I transfer, and from what?

For a labelled target data set it scores candidate networks by how well their frozen
features (LogME, H-score) and their own classifiers' outputs (LEEP) suit the target labels —
no training, one forward pass over a sample — and, given a source data set, measures the
domain gap (proxy A-distance) on pixels and on features. A recommendation in plain words
follows from those numbers; the rules are written out in :func:`recommend`.

Candidates: backbone names as ``transferkit finetune --backbone`` takes them, optionally with
``@WEIGHTS`` (``efficientnet_lite0@random``, ``resnet50@imagenet``, ``run:DIR@trained``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.advise.scores import h_score, leep, logme, proxy_a_distance
from transferkit.errors import TransferkitError


@dataclass
class CandidateScore:
    candidate: str
    backbone: str
    weights: str
    feature_dim: int
    logme: float
    h_score: float
    leep: float | None
    seconds: float


def parse_candidate(text: str) -> tuple[str, str]:
    name, _, weights = text.partition("@")
    if not name:
        raise TransferkitError(f"--backbones {text}: expected NAME or NAME@WEIGHTS")
    default = "trained" if name.startswith("run:") else "imagenet"
    return name, weights or default


def sample(image_set: Any, count: int, seed: int) -> Any:
    """A class-balanced sample of an image set (all of it when smaller)."""
    from transferkit.data.images import ImageSet, stack_images
    from transferkit.recipes import balanced_subset

    labels = np.asarray(image_set.labels)
    if count >= len(labels):
        return image_set
    index = balanced_subset(labels, count, seed)
    images = stack_images([np.asarray(image_set.images[i]) for i in index])
    return ImageSet(images, labels[index], image_set.classes)


def features_and_outputs(
    backbone: Any, image_set: Any, device: torch.device, progress: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features (n×d) and, when the network has its own classifier, its class
    probabilities (n×z)."""
    from transferkit.data import imaging
    from transferkit.training import activations

    spec = backbone.spec
    images = imaging.prepare(image_set, spec.input_size, False, spec.crop_fraction)
    (features,) = activations.cached_views(
        backbone, images, len(backbone.stages), spec.input_size, device, 1, -1, progress, "features"
    )
    features = features.float()
    probabilities = None
    classifier = backbone.source_classifier
    if classifier is not None:
        classifier = classifier.to(device).eval()
        with torch.inference_mode():
            chunks = [
                classifier(features[i : i + 512].to(device)).float().softmax(1).cpu()
                for i in range(0, len(features), 512)
            ]
        probabilities = torch.cat(chunks).numpy()
    return features.numpy(), probabilities


def score_candidate(
    text: str, target: Any, device: torch.device, data_root: str | None = None, progress: bool = False
) -> CandidateScore:
    from transferkit.models.backbones import build_backbone

    started = time.perf_counter()
    name, weights = parse_candidate(text)
    torch.manual_seed(0)  # random-weight candidates are the same network every time
    backbone = build_backbone(name, weights, data_root=data_root).to(device)
    features, probabilities = features_and_outputs(backbone, target, device, progress)
    labels = np.asarray(target.labels)
    return CandidateScore(
        candidate=text,
        backbone=name,
        weights=weights,
        feature_dim=features.shape[1],
        logme=logme(features, labels),
        h_score=h_score(features, labels),
        leep=leep(probabilities, labels) if probabilities is not None else None,
        seconds=time.perf_counter() - started,
    )


def domain_gap(
    source: Any,
    target: Any,
    samples: int,
    backbone_text: str | None,
    device: torch.device,
    data_root: str | None = None,
    size: int = 32,
) -> dict[str, Any]:
    """Proxy A-distance between two image sets, on pixels (both as size×size RGB) and, when a
    backbone is named, on its features."""
    from transferkit.data.imaging import prepare

    gap: dict[str, Any] = {}
    pixels = proxy_a_distance(
        prepare(source, size, crop_fraction=1.0).numpy(),
        prepare(target, size, crop_fraction=1.0).numpy(),
        samples=samples,
    )
    gap["pixels"] = {
        "proxy_a_distance": pixels.proxy_a_distance,
        "domain_error": pixels.domain_error,
        "samples_per_domain": pixels.samples_per_domain,
        "size": size,
    }
    if backbone_text:
        from transferkit.models.backbones import build_backbone

        name, weights = parse_candidate(backbone_text)
        torch.manual_seed(0)
        backbone = build_backbone(name, weights, data_root=data_root).to(device)
        a, _ = features_and_outputs(backbone, source, device)
        b, _ = features_and_outputs(backbone, target, device)
        features = proxy_a_distance(a, b, samples=samples)
        gap["features"] = {
            "backbone": backbone_text,
            "proxy_a_distance": features.proxy_a_distance,
            "domain_error": features.domain_error,
            "samples_per_domain": features.samples_per_domain,
        }
    return gap


# The thresholds below are the rules of thumb the recommendation applies; the numbers they
# rest on are printed beside it, so a reader can disagree with the rule, not the data.
FEW_LABELS_PER_CLASS = 100  # below this, fine-tuning tends to overfit: prefer frozen features
SMALL_GAP = 0.5  # proxy A-distance on pixels below this: the domains look alike


def recommend(
    scores: list[CandidateScore],
    labelled_per_class: float | None,
    gap: dict[str, Any] | None,
    reference: str | None,
) -> str:
    """Plain words: train from scratch, extract features, fine-tune, or adapt without labels."""
    lines = []
    ranked = sorted(scores, key=lambda s: s.logme, reverse=True)
    best = ranked[0]
    ref = next((s for s in scores if s.candidate == reference), None)
    if labelled_per_class is None:  # no target labels: domain adaptation territory
        if gap is None:
            return "Without target labels, pass --source to measure the domain gap."
        pad = gap["pixels"]["proxy_a_distance"]
        if pad < SMALL_GAP:
            return (
                f"The domains look alike (proxy A-distance {pad:.2f} on pixels < {SMALL_GAP}): train on "
                f"the labelled source and apply the model to the target as it is."
            )
        return (
            f"The domains differ (proxy A-distance {pad:.2f} on pixels ≥ {SMALL_GAP}) and the target "
            f"has no labels: adapt without labels (transferkit adapt --method dann)."
        )
    if ref is not None and best.candidate == ref.candidate:
        lines.append(
            f"No pretrained candidate beats random weights ({ref.candidate}: LogME {ref.logme:.3f} "
            f"is the highest): train from scratch."
        )
    else:
        margin = f" vs {ref.logme:.3f} for random weights" if ref is not None else ""
        lines.append(f"Transfer from {best.candidate}: the highest LogME ({best.logme:.3f}{margin}).")
        if labelled_per_class < FEW_LABELS_PER_CLASS:
            lines.append(
                f"With {labelled_per_class:.0f} labelled images per class (< {FEW_LABELS_PER_CLASS}), "
                f"extract features and train a new head (transferkit extract --backbone "
                f"{best.backbone})."
            )
        else:
            lines.append(
                f"With {labelled_per_class:.0f} labelled images per class, fine-tune: new head, "
                f"then the last blocks (transferkit finetune --backbone {best.backbone})."
            )
    if gap is not None:
        pad = gap["pixels"]["proxy_a_distance"]
        word = "alike" if pad < SMALL_GAP else "different"
        lines.append(f"Source and target pixels look {word} (proxy A-distance {pad:.2f}).")
    return " ".join(lines)


def advise(
    target: str,
    source: str | None = None,
    candidates: list[str] | None = None,
    samples: int = 1000,
    gap_samples: int = 2000,
    device: str = "auto",
    data_root: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    reference: bool = True,
) -> dict[str, Any]:
    from transferkit.data.loading import load_split
    from transferkit.training.device import resolve_device

    started = time.perf_counter()
    torch_device = resolve_device(device)
    candidates = list(candidates or ["efficientnet_lite0"])
    reference_name = None
    if reference:
        first, _ = parse_candidate(candidates[0])
        reference_name = f"{first}@random"
        if reference_name not in candidates:
            candidates.append(reference_name)
    target_train = load_split(target, "train", data_root)
    labels = np.asarray(target_train.labels)
    per_class = float(np.bincount(labels).mean())
    probe = sample(target_train, samples, seed=0)
    scores = []
    for text in candidates:
        if progress:
            print(f"scoring {text} on {len(probe.labels)} {target} images …", flush=True)
        scores.append(score_candidate(text, probe, torch_device, data_root))
    gap = None
    if source is not None:
        source_train = load_split(source, "train", data_root)
        gap = domain_gap(
            sample(source_train, gap_samples, 1),
            sample(target_train, gap_samples, 2),
            gap_samples,
            candidates[0],
            torch_device,
            data_root,
        )
    result = {
        "target": target,
        "source": source,
        "samples": len(probe.labels),
        "labelled_per_class": per_class,
        "target_classes": len(target_train.classes),
        "candidates": [s.__dict__ for s in sorted(scores, key=lambda s: s.logme, reverse=True)],
        "domain_gap": gap,
        "reference": reference_name,
        "recommendation": recommend(scores, per_class, gap, reference_name),
        "wall_seconds": time.perf_counter() - started,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "advise.json").write_text(json.dumps(result, indent=2))
        (out / "advise.md").write_text(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"# Should I transfer to {result['target']}?",
        "",
        f"{result['samples']} labelled target images scored; higher is better for every score.",
        "",
        "| rank | candidate | features | LogME | H-score | LEEP |",
        "|---|---|---|---|---|---|",
    ]
    for rank, c in enumerate(result["candidates"], start=1):
        leep_text = f"{c['leep']:.3f}" if c["leep"] is not None else "–"
        lines.append(
            f"| {rank} | {c['candidate']} | {c['feature_dim']} | {c['logme']:.3f} | "
            f"{c['h_score']:.3f} | {leep_text} |"
        )
    gap = result.get("domain_gap")
    if gap:
        lines += [
            "",
            f"Domain gap {result['source']} → {result['target']} (proxy A-distance, 0 = alike, "
            f"2 = fully separable):",
            "",
            f"- pixels ({gap['pixels']['size']}×{gap['pixels']['size']}): "
            f"{gap['pixels']['proxy_a_distance']:.3f} (domain classifier error "
            f"{gap['pixels']['domain_error']:.3f})",
        ]
        if "features" in gap:
            lines.append(
                f"- {gap['features']['backbone']} features: {gap['features']['proxy_a_distance']:.3f}"
            )
    lines += ["", f"**Recommendation.** {result['recommendation']}"]
    return "\n".join(lines) + "\n"
