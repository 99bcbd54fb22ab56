"""VADA on DANN's protocol: domain-adversarial training plus the cluster assumption
(Shu, Bui, Narui & Ermon, "A DIRT-T Approach to Unsupervised Domain Adaptation", ICLR 2018,
§3–4: Virtual Adversarial Domain Adaptation) — a method past the DANN paper's table.

DANN makes the two domains' feature distributions alike but does not stop the classifier's
decision boundary from running through dense regions of target images. VADA adds two terms
that push it out of them (the cluster assumption):

- the conditional entropy of the classifier on the target batch,
  L_c = −mean_i Σ_k p_ik log p_ik, which rewards confident target predictions;
- virtual adversarial training (Miyato et al. 2018): for each image x, the perturbation r of
  norm ε that changes the prediction most, found by one power iteration (H d for a random
  unit direction d, H the Hessian of r ↦ KL(p(x) ‖ p(x + r)) at 0, normalized; computed
  exactly, see :func:`adversarial_direction`), and the loss L_v = KL(p(x) ‖ p(x + r)) with
  p(x) held constant: the classifier is made locally smooth, on source and on target images.

The loss of a step is DANN's (the same network, schedules, batches and domain loss through the
gradient-reversal layer with λ_p) + λ_s · L_v(source) + λ_t · (L_c(target) + L_v(target)).

Where the settings come from (none was chosen by a transferkit run):

- λ_s = 1, λ_t = 0.01 and one power iteration: the defaults of the authors' code
  (github.com/RuiShu/dirt-t, ``run_dirtt.py`` and ``extra_layers.py``). The paper's appendix
  lists per-task values which we could not consult offline; these defaults are what the code
  runs when no task is named. The authors' code finds H d by a finite difference with a probe
  of ξ = 1e-6; in float32 on inputs of size ~1 that probe is mostly rounded away (issue 20),
  so the product is computed exactly instead (the ξ → 0 limit the finite difference stands
  for).
- ε: the authors' radius is 3.5 for 32 × 32 × 3 images scaled to [−1, 1], a perturbation of
  root-mean-square 3.5 / √3072 ≈ 0.063 per value, 3.2 % of the pixel range. Our images are in
  [0, 1] less their mean, so the same share of the range is ε = 1.75 · √(D / 3072) for D
  input values: 1.53 for the MNIST network's 28 × 28 × 3, 1.75 for 32 × 32 × 3.
- The domain-adversarial part stays DANN's, not the paper's (a separately trained
  discriminator with weight 0.01 and Adam at 10⁻³): the comparison this method answers is
  "DANN's protocol, with VADA's regularizers added or not".

Cost: the virtual adversarial terms take a forward-mode pass, a forward pass and two backward
passes of the joint batch more per step. Measured results: ``benchmarks/results/vada.md``;
read a run's class-share check (:mod:`transferkit.checks`) before trusting it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from transferkit.methods.dann import DANN
from transferkit.models.digit_networks import DigitNetwork

SOURCE_WEIGHT = 1.0  # λ_s
TARGET_WEIGHT = 0.01  # λ_t
XI = 1e-6  # the authors' finite-difference probe (kept for measurement: see adversarial_direction)
REFERENCE_RADIUS = 3.5  # the authors' ε, for 32 × 32 × 3 images in [−1, 1]
REFERENCE_VALUES = 32 * 32 * 3
REFERENCE_RANGE = 2.0


def matched_radius(values_per_image: int, pixel_range: float = 1.0) -> float:
    """ε giving the same root-mean-square perturbation per value, as a share of the pixel
    range, as the authors' 3.5 on 32 × 32 × 3 images in [−1, 1]."""
    if values_per_image <= 0 or pixel_range <= 0:
        raise ValueError("values_per_image and pixel_range must be positive")
    per_value = REFERENCE_RADIUS / math.sqrt(REFERENCE_VALUES) / REFERENCE_RANGE
    return per_value * pixel_range * math.sqrt(values_per_image)


def _unit(directions: torch.Tensor) -> torch.Tensor:
    """Each image's perturbation scaled to L2 norm 1."""
    norms = directions.flatten(1).norm(dim=1).clamp_min(1e-12)
    return directions / norms.view(-1, *([1] * (directions.ndim - 1)))


def conditional_entropy(logits: torch.Tensor) -> torch.Tensor:
    """−mean_i Σ_k p_ik log p_ik of a batch of class logits (0 when every row is certain)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def softmax_hessian_product(probabilities: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(diag(p) − p pᵀ) v for each row: the Hessian of KL(p ‖ softmax(z)) in the logits z at
    z = log p, times v. Written (A v)_i = p_i Σ_j p_j (v_i − v_j), which keeps its relative
    precision when p is nearly one-hot (the form p ∘ v − p (p · v) cancels to rounding noise
    there)."""
    differences = vectors.unsqueeze(2) - vectors.unsqueeze(1)  # N × K × K: v_i − v_j
    return probabilities * (differences * probabilities.unsqueeze(1)).sum(dim=2)


def adversarial_direction(classifier, images: torch.Tensor, logits: torch.Tensor,
                          xi: float | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """The unit direction (per image) that changes p(x) = softmax(``logits``) most, by one
    power iteration from a random unit direction d (``start``, drawn when not given): H d,
    normalized, H the Hessian of r ↦ KL(p(x) ‖ p(x + r)) at r = 0.

    ``xi=None`` (the default) computes H d exactly: H = Jᵀ A J at r = 0 (J the Jacobian of the
    logits in the input, A the softmax Hessian), so H d is one forward-mode product J d, then
    A (J d), then one backward product Jᵀ(·). This is the ξ → 0 limit that VAT's finite
    difference approximates.

    A float ``xi`` computes the finite difference of VAT's papers and code instead: the
    gradient of KL(p(x) ‖ p(x + ξd)) in the probe ξd, which tends to ξ H d. It needs a probe
    that the images' precision can hold: with ξ = 1e-6 (the authors' value) on float32 images
    of size ~1 most of the probe is rounded away and the direction is not H d (though still one
    the network is sensitive to: ``benchmarks/experiments/vat_probe.py``; kept for that
    measurement and as a float64 reference)."""
    probabilities = F.softmax(logits.detach(), dim=1)
    images = images.detach()
    start = torch.randn_like(images) if start is None else start.to(images)
    direction = _unit(start)
    if xi is None:
        inputs = images.clone().requires_grad_(True)
        with forward_ad.dual_level():
            outputs = classifier(forward_ad.make_dual(inputs, direction))
            primal, tangent = forward_ad.unpack_dual(outputs)
        product = softmax_hessian_product(probabilities, tangent.detach())
        (gradient,) = torch.autograd.grad(primal, inputs, grad_outputs=product)
        return _unit(gradient.detach())
    log_target = F.log_softmax(logits.detach(), dim=1)
    probe = (xi * direction).requires_grad_(True)
    probe_log_p = F.log_softmax(classifier(images + probe), dim=1)
    divergence = (probabilities * (log_target - probe_log_p)).sum()
    (gradient,) = torch.autograd.grad(divergence, probe)
    return _unit(gradient.detach())


def probe_share_changed(images: torch.Tensor, xi: float = XI,
                        start: torch.Tensor | None = None) -> float:
    """The share of input values that ``images + ξ·unit(d)`` changes in ``images``' precision
    (1.0: the whole probe reaches the network; near 0: it is rounded away)."""
    start = torch.randn_like(images) if start is None else start.to(images)
    probe = xi * _unit(start)
    return float(((images + probe) != images).float().mean())


@contextmanager
def batchnorm_statistics_kept(module: torch.nn.Module):
    """BatchNorm layers in training mode normalize with the batch as usual but leave their
    running statistics as they were: the extra passes of VAT (probe, perturbed images) are
    not data the running statistics should describe."""
    saved = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.training:
            tracked = layer.num_batches_tracked.clone() if layer.num_batches_tracked is not None else None
            saved.append((layer, layer.momentum, tracked))
            layer.momentum = 0.0  # running ← (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for layer, momentum, tracked in saved:
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)


def virtual_adversarial_divergence(classifier, images: torch.Tensor, logits: torch.Tensor,
                                   radius: float, xi: float | None = None) -> torch.Tensor:
    """KL(p(x) ‖ p(x + r)) of each image (a vector), r the virtual adversarial perturbation
    of norm ``radius`` found by one power iteration (:func:`adversarial_direction`); p(x) =
    softmax(``logits``) is held constant. Gradients reach ``classifier``'s weights only
    through p(x + r)."""
    target = F.softmax(logits.detach(), dim=1)
    log_target = F.log_softmax(logits.detach(), dim=1)
    with batchnorm_statistics_kept(classifier):
        perturbation = radius * adversarial_direction(classifier, images, logits, xi)
        adversarial_log_p = F.log_softmax(classifier(images.detach() + perturbation), dim=1)
    return (target * (log_target - adversarial_log_p)).sum(dim=1)


class VADA(DANN):
    name = "vada"
    perturbs_inputs = True

    def __init__(self, network: DigitNetwork, domain_loss: str = "mean",
                 source_weight: float = SOURCE_WEIGHT, target_weight: float = TARGET_WEIGHT,
                 radius: float | None = None) -> None:
        super().__init__(network, domain_loss)
        self.source_weight = source_weight
        self.target_weight = target_weight
        values = 3 * network.image_size * network.image_size
        # a backbone's inputs are divided by its std: the pixel range is 1/std, not 1
        spec = getattr(getattr(network, "backbone", None), "spec", None)
        pixel_range = len(spec.std) / sum(spec.std) if spec is not None else 1.0
        self.radius = matched_radius(values, pixel_range) if radius is None else radius

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        values, features = self.adversarial_losses(images, labels, target_images, progress)
        logits = self.network.label_predictor(features)
        sources = len(images)
        entropy = conditional_entropy(logits[sources:])
        joint = torch.cat([images, target_images])
        divergence = virtual_adversarial_divergence(self.network, joint, logits, self.radius)
        source_vat = divergence[:sources].mean()
        target_vat = divergence[sources:].mean()
        values["loss"] = (values["loss"] + self.source_weight * source_vat
                          + self.target_weight * (entropy + target_vat))
        values["target_entropy"] = entropy.detach()
        values["source_vat"] = source_vat.detach()
        values["target_vat"] = target_vat.detach()
        return values
