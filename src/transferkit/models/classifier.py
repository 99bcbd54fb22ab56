"""One network contract for every adaptation method, on any backbone.

A method (``transferkit.methods``) trains a *network* that offers:

- ``features(images)``: one feature vector per image (N × ``feature_dim``);
- ``label_predictor``: a module from features to class logits, its last layer ``nn.Linear``;
- ``hidden(images)``: the descriptors Subspace Alignment aligns;
- ``image_size`` and ``domain_hidden`` (the hidden widths of the domain classifier a
  domain-adversarial method builds for it).

Two kinds of network keep it:

- :class:`~transferkit.models.digit_networks.DigitNetwork`, the DANN paper's three networks
  (they also carry the paper's domain classifier, as every digit run so far has saved it);
- :class:`BackboneClassifier`: any backbone of :func:`transferkit.models.backbones.build_backbone`
  (torchvision by name, ``timm:NAME``, ``efficientnet_lite0``, ``small_convnet``, ``run:DIR``)
  → an optional bottleneck → a linear head, the layout of Transfer-Learning-Library's
  ``Classifier``. Its first stages can be frozen (``unfreeze``: how many stages with weights
  train, from the end); frozen stages keep their BatchNorm statistics (inference mode).

:func:`build_network` makes either from a name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.models.digit_networks import NETWORKS, DigitNetwork

# Widths of the domain classifier built for a backbone network: the DANN paper's for its SVHN
# and sign networks, and Transfer-Learning-Library's default discriminator width.
DOMAIN_HIDDEN = (1024, 1024)
# Features after the bottleneck (Transfer-Learning-Library's default for its adaptation runs).
BOTTLENECK = 256
# A pretrained backbone trains at this fraction of the learning rate of the layers that start
# from scratch (bottleneck, head, domain classifier): its weights are already good, and the
# full rate would wash them out in the first steps. A tenth is the common rule for adapting
# ImageNet networks: Transfer-Learning-Library's Classifier gives its backbone 0.1 × the rate
# when fine-tuning, and DAN (Long et al. 2015) trains its new layers at 10× the pretrained ones.
BACKBONE_LR_SCALE = 0.1


class BackboneClassifier(nn.Module):
    """``backbone`` → bottleneck (Linear + BatchNorm + ReLU, or none) → ``label_predictor``."""

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck: int | None = BOTTLENECK,
                 unfreeze: int | str = "all") -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.feature_dim
        if bottleneck:
            self.bottleneck: nn.Module = nn.Sequential(
                nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True))
            width = bottleneck
        else:
            self.bottleneck = nn.Identity()
        self.label_predictor = nn.Sequential(nn.Linear(width, num_classes))
        self.feature_dim = width
        self.image_size = backbone.spec.input_size
        self.domain_hidden = DOMAIN_HIDDEN
        self.split = backbone.split_index(unfreeze)
        for stage in backbone.stages[: self.split]:
            stage.requires_grad_(False)
        # stages[:start] already applied to the inputs: 0 for images; ``split`` while reading
        # the frozen prefix's cached activations (see :func:`reading_prefix`)
        self.start = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.backbone(images, self.start))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.label_predictor(self.features(images))

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        for stage in self.backbone.stages[: self.split]:
            stage.eval()  # frozen stages keep their pretrained BatchNorm statistics
        return self

    def parameter_groups(self, extra: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimizer groups: the trainable backbone at :data:`BACKBONE_LR_SCALE` of the rate,
        everything else (``extra``: a method's own modules) at the full rate."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        rest = [p for p in (*self.bottleneck.parameters(), *self.label_predictor.parameters(), *extra)
                if p.requires_grad]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if backbone:  # a backbone that starts from random weights learns at the full rate
            pretrained = self.backbone.spec.weights != "random"
            groups.append({"params": backbone, "lr_scale": BACKBONE_LR_SCALE if pretrained else 1.0})
        return groups


@contextmanager
def reading_prefix(*networks: BackboneClassifier) -> Iterator[None]:
    """Inside, ``networks`` take the outputs of their frozen stages (``stages[:split]``) as
    inputs instead of images; outside, images again."""
    try:
        for network in networks:
            network.start = network.split
        yield
    finally:
        for network in networks:
            network.start = 0


def is_digit_network(name: str) -> bool:
    return name in NETWORKS


def build_network(name: str, num_classes: int, image_size: int | None = None, weights: str = "imagenet",
                  unfreeze: int | str = "all", bottleneck: int | None = BOTTLENECK,
                  data_root: str | None = None) -> nn.Module:
    """The network ``name`` for ``num_classes`` classes: one of the paper's digit networks
    (``mnist``, ``svhn``, ``gtsrb``; ``weights`` does not apply) or a backbone name with a new
    bottleneck and head."""
    if is_digit_network(name):
        return DigitNetwork(name, num_classes, image_size)
    from transferkit.models.backbones import build_backbone

    if weights == "imagenet" and name.startswith("run:"):
        weights = "trained"
    backbone = build_backbone(name, weights, input_size=image_size, data_root=data_root)
    size = backbone.spec.input_size
    was_training = backbone.training
    try:  # one image through the backbone: a size it cannot take is named here, not mid-run
        with torch.no_grad():
            before_pool = backbone.eval()(torch.zeros(2, 3, size, size), 0, len(backbone.stages) - 1)
            probe = backbone(before_pool, len(backbone.stages) - 1)
    except (RuntimeError, AssertionError, ValueError):
        raise TransferkitError(f"--image-size {size} is too small for the backbone {name} "
                               "(its convolutions and poolings leave nothing of the image); "
                               "give a larger --image-size") from None
    finally:
        backbone.train(was_training)
    if before_pool.ndim != 4 or probe.ndim != 2:  # e.g. a vision transformer's tokens
        raise TransferkitError(f"--backbone {name}: its last stage gives {tuple(before_pool.shape[1:])} "
                               "per image, not a feature map to pool; transferkit adapts convolutional "
                               "backbones")
    width = probe.shape[1]
    backbone.feature_dim = width  # what the stages give (a model's num_features may name another layer)
    try:
        return BackboneClassifier(backbone, num_classes, bottleneck, unfreeze)
    except TransferkitError:
        raise
    except (ValueError, TypeError) as exc:
        raise TransferkitError(f"--backbone {name}: {exc}") from None


def network_of_run(config: dict[str, Any], num_classes: int, initial: bool = False,
                   data_root: str | None = None) -> nn.Module:
    """The untrained network an adapt run's ``config.json`` describes, to load its
    ``model.safetensors`` into. ``initial``: with the weights the run started from (its
    pretrained backbone), for a picture of "before"; otherwise the backbone is built without
    its pretrained weights (no download: every weight is then read from the run)."""
    backbone = config.get("backbone")
    if backbone is None:
        return DigitNetwork(config["network"], num_classes, config["image_size"],
                            input_norm=config.get("input_norm"))
    weights = config.get("weights", "imagenet") if initial else "random"
    if backbone.startswith("run:"):
        weights = "trained"
    return build_network(backbone, num_classes, config["image_size"], weights,
                         config.get("unfreeze", "all"), config.get("bottleneck", BOTTLENECK), data_root)
