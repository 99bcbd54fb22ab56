"""Source only: the label predictor trained on labelled source data alone (the lower
reference of Ganin et al. 2016, Table 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transferkit.methods.base import Method


class SourceOnly(Method):
    name = "source_only"

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               target_images: torch.Tensor | None, progress: float) -> dict[str, torch.Tensor]:
        class_loss = F.cross_entropy(self.network(images), labels)
        return {"loss": class_loss, "class_loss": class_loss.detach()}
