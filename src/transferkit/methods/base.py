"""What a method is: a network, the losses of one step, and which data it learns from.

The training loop (``transferkit.training.loop``) owns batching, schedules, optimizer,
logging and checkpoints; a method only says what its losses are.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from transferkit.data.pairs import DomainPair, DomainSplit
from transferkit.models import DigitNetwork


class Method(nn.Module):
    name: ClassVar[str]
    oracle: ClassVar[bool] = False  # learns from target labels: a reference, not adaptation
    uses_target: ClassVar[bool] = False  # needs unlabelled target batches
    # perturbs the input images themselves (so it cannot train on a frozen prefix's cached
    # activations in their place)
    perturbs_inputs: ClassVar[bool] = False

    def __init__(self, network: DigitNetwork) -> None:
        super().__init__()
        self.network = network

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups, each with an ``lr_scale`` (the loop multiplies the
        scheduled learning rate by it): a network that has a rule (a pretrained backbone at a
        fraction of the rate, see :mod:`transferkit.models.classifier`) gets it, with the
        method's own modules at the full rate; otherwise one group of every parameter."""
        if hasattr(self.network, "parameter_groups"):
            own = [p for name, p in self.named_parameters() if not name.startswith("network.")]
            return self.network.parameter_groups(own)
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    def frozen_keys(self) -> set[str]:
        """State-dict keys that training cannot change, so checkpoints leave them out: frozen
        parameters (``requires_grad`` off) and the buffers of modules in inference mode while
        the method trains (a frozen stage's BatchNorm statistics). Called in training mode."""
        frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        for module_name, module in self.named_modules():
            if not module.training:
                prefix = f"{module_name}." if module_name else ""
                frozen |= {prefix + name for name, _ in module.named_buffers(recurse=False)}
        return frozen

    def labelled_split(self, pair: DomainPair) -> DomainSplit:
        """The labelled data of the classification loss."""
        return pair.source_train

    def monitor_split(self, pair: DomainPair) -> DomainSplit | None:
        """Labelled data watched each epoch (never target-test)."""
        return pair.source_test

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        """``loss`` to minimize, plus any detached values to log. ``progress`` is p ∈ [0, 1]."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.network(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.features(images)

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.hidden(images)
