"""DANN + FixMatch/AdaMatch self-training: its warm-up, views, pseudo-labels and loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from transferkit.methods.fixmatch import (
    DANNFixMatch,
    aligned_pseudo_labels,
    strong_view,
    warm_up,
    weak_view,
)
from transferkit.models import DigitNetwork


def test_warm_up_rises_from_zero_to_one_by_half_way():
    assert warm_up(0.0) == 0.0
    assert warm_up(0.25) == pytest.approx(0.5)
    assert warm_up(0.5) == pytest.approx(1.0)
    assert warm_up(0.9) == pytest.approx(1.0)
    assert all(warm_up(a / 100) <= warm_up(b / 100) for a, b in zip(range(100), range(1, 101), strict=True))


def test_views_keep_shape_and_a_flat_image_stays_flat_under_the_shift():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 28, 28)
    assert weak_view(images).shape == images.shape
    assert strong_view(images).shape == images.shape
    flat = torch.full((4, 3, 28, 28), 0.7)
    assert torch.allclose(weak_view(flat), flat, atol=1e-5)  # border pixels repeat: no dark edge


def test_weak_view_without_a_shift_is_the_image_and_with_one_moves_it():
    torch.manual_seed(0)
    images = torch.rand(5, 3, 32, 32)
    assert torch.allclose(weak_view(images, shift=0.0), images, atol=1e-5)
    moved = weak_view(images, shift=0.125)
    assert (moved - images).abs().mean() > 0.05  # uniform noise images: any shift changes them


def test_strong_view_is_reproducible_from_the_seed_and_differs_from_the_image():
    images = torch.rand(8, 3, 28, 28)
    torch.manual_seed(3)
    first = strong_view(images)
    torch.manual_seed(3)
    again = strong_view(images)
    assert torch.equal(first, again)
    assert (first - images).abs().mean() > 0.1


def test_pseudo_labels_are_aligned_to_the_source_class_distribution():
    source = torch.log(torch.tensor([[0.98, 0.02], [0.02, 0.98]] * 8))  # balanced, confident
    # every target image leans to class 0 the same way: after alignment nothing is certain
    leaning = torch.log(torch.tensor([[0.7, 0.3]] * 16))
    labels, keep, threshold = aligned_pseudo_labels(source, leaning, confidence=0.9)
    assert threshold == pytest.approx(0.9 * 0.98, abs=1e-4)
    assert not keep.any()
    # confident and balanced target predictions pass unchanged, with their own classes
    confident = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]] * 8))
    labels, keep, _ = aligned_pseudo_labels(source, confident, confidence=0.9)
    assert keep.all()
    assert labels.tolist() == [0, 1] * 8


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    target = torch.randn(8, 3, 28, 28, generator=generator)
    return images, labels, target


def test_no_pseudo_label_loss_before_the_warm_up_and_a_real_one_after():
    torch.manual_seed(0)
    method = DANNFixMatch(DigitNetwork("mnist", 10))
    images, labels, target = _batch()
    early = method.losses(images, labels, target, progress=0.0)
    assert float(early["pseudo_label_loss"]) == 0.0
    late = method.losses(images, labels, target, progress=0.6)
    assert float(late["pseudo_labelled_share"]) > 0.0
    assert float(late["pseudo_label_loss"]) > 0.0
    assert math.isfinite(float(late["loss"].detach()))


def test_the_pseudo_label_term_reaches_the_weights():
    def gradient(weight: float) -> torch.Tensor:
        torch.manual_seed(0)
        method = DANNFixMatch(DigitNetwork("mnist", 10), weight=weight)
        images, labels, target = _batch()
        torch.manual_seed(1)  # the same views for both
        method.losses(images, labels, target, progress=0.75)["loss"].backward()
        return method.network.features[0].weight.grad.clone()

    without, with_term = gradient(0.0), gradient(1.0)
    # the difference is the pseudo-label term's own gradient, far above rounding
    assert (with_term - without).abs().max() > 1e-3 * without.abs().max()


def test_confidence_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="confidence"):
        DANNFixMatch(DigitNetwork("mnist", 10), confidence=1.5)


def test_instance_norm_makes_the_network_blind_to_per_channel_brightness_and_contrast():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 28, 28)
    scale = torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1)
    shift = torch.tensor([0.7, -1.0, 0.2]).view(1, 3, 1, 1)
    changed = images * scale + shift
    normed = DigitNetwork("mnist", 10, input_norm="instance").eval()
    plain = DigitNetwork("mnist", 10).eval()
    with torch.no_grad():
        logits = normed(images)
        gap = (normed(changed) - logits).abs().max()
        plain_gap = (plain(changed) - plain(images)).abs().max()
    # ε = 1e-3 against variances of 0.25-9 leaves a relative difference below 1e-3
    assert gap < 1e-2 * logits.abs().max()
    assert plain_gap > 0.5 * plain(images).abs().max()
    with pytest.raises(ValueError, match="input normalization"):
        DigitNetwork("mnist", 10, input_norm="batch")


def test_an_instance_norm_run_records_it_and_loads_back(tmp_path):
    from fakes import write_digit_pair

    from transferkit import DomainAdapter
    from transferkit.errors import TransferkitError

    root = write_digit_pair(tmp_path / "data")
    run = tmp_path / "run"
    adapter = DomainAdapter(method="dann_fixmatch", network="mnist", image_size=28, epochs=1,
                            steps_per_epoch=2, batch_size=8, device="cpu", data_root=root,
                            progress=False, run_dir=run, input_norm="instance").fit("mnist", "mnist_m")
    assert json.loads((run / "config.json").read_text())["input_norm"] == "instance"
    loaded = DomainAdapter.load(run, data_root=root, progress=False)
    assert isinstance(loaded.model_.network.features[0], torch.nn.InstanceNorm2d)
    assert loaded.score() == adapter.score()
    with pytest.raises(TransferkitError, match="--input-norm"):
        DomainAdapter(backbone="resnet18", input_norm="instance")
