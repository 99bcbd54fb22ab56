"""The notebook-facing object: hyper-parameters in the constructor, ``fit`` returns self,
``predict`` and ``score`` after it.

>>> from transferkit import DomainAdapter
>>> adapter = DomainAdapter(method="dann", epochs=10).fit("mnist", "mnist_m")  # doctest: +SKIP
>>> adapter.score()  # target-test accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save as arrays_bytes

from transferkit.checks import PredictionShares, prediction_shares
from transferkit.data.pairs import DomainPair, DomainSplit, held_out_tenth, load_pair, pair_of_run
from transferkit.errors import TransferkitError
from transferkit.methods import METHOD_NAMES, Method, SubspaceAlignment, trained_method
from transferkit.methods.subspace_alignment import SA_FEATURES
from transferkit.models import NETWORKS, DigitNetwork
from transferkit.models.classifier import (
    BOTTLENECK,
    BackboneClassifier,
    build_network,
    is_digit_network,
    network_of_run,
    reading_prefix,
)
from transferkit.models.digit_networks import INPUT_NORMS
from transferkit.names import GEOMETRIES
from transferkit.training import distributed
from transferkit.training.batches import (
    CachedInputs,
    FitData,
    InMemory,
    disk_prefix,
    prefix_bytes,
    with_cached_prefix,
)
from transferkit.training.device import describe_machine, resolve_device
from transferkit.training.loop import (
    CHECKPOINT,
    EPOCHS_FOLDER,
    METRICS_LINES,
    RunClock,
    TrainConfig,
    evaluate,
    fit,
    pair_data,
    predict,
    run_batches,
    weight_average,
)
from transferkit.training.runfolder import (
    check_same_settings,
    discard,
    locked,
    previous_wall_seconds,
    read_safetensors,
    replace_file,
    save_tensors,
    write_config,
    write_json,
)
from transferkit.training.runlog import check_log, open_log
from transferkit.validators import SELECTORS, choose_epoch

# A backbone network with frozen stages trains on their outputs, computed once, when those take
# at most this much memory (float32, source + target + source validation); beyond, the frozen
# stages run at every step as the rest does.
PREFIX_CACHE_BYTES = 4 << 30

# The paper's network and input size for each of its pairs (Ganin et al. 2016, §5.2).
PAIR_NETWORKS: dict[tuple[str, str], tuple[str, int]] = {
    ("mnist", "mnist_m"): ("mnist", 28),
    ("syn_digits", "svhn"): ("svhn", 32),
    ("svhn", "mnist"): ("svhn", 32),
    ("syn_signs", "gtsrb"): ("gtsrb", 40),
}


# Pairs whose images must be centered, not resized, to share one geometry: MNIST-M's 32×32
# images are MNIST digits with a 2-pixel border, so resizing them to 28×28 would shrink every
# digit by an eighth relative to the source; cropping the border restores MNIST's geometry.
PAIR_GEOMETRIES: dict[tuple[str, str], str] = {("mnist", "mnist_m"): "center"}


def default_geometry(source: str, target: str) -> str:
    return PAIR_GEOMETRIES.get((source, target), "resize")


def default_network(source: str, target: str, num_classes: int) -> tuple[str, int]:
    """The paper's choice for its pairs; otherwise the sign net for 43 classes, else the MNIST
    network at 28 px (the network the adaptation recipe was developed on, see
    :data:`ADAPT_RECIPE`)."""
    if (source, target) in PAIR_NETWORKS:
        return PAIR_NETWORKS[(source, target)]
    return ("gtsrb", 40) if num_classes == 43 else ("mnist", 28)


# The adaptation recipe: what ``transferkit adapt`` does, where a setting is not given, on a pair
# outside the paper's table with the paper's digit networks. Developed on MNIST → MNIST-CD (the
# development pair, whose target labels may be looked at) and frozen before it met the paper's
# pairs: benchmarks/results/selftraining.md. The budget is counted in steps (20 epochs of 1,000
# steps of 64 + 64 images), not in passes over a source of whatever size; each epoch's weight
# average is kept and information maximization on the unlabeled target images chooses among them.
# Instance-normalized inputs ("auto") on the MNIST network only: on the sign network, at the
# paper's learning rate, they made the source classifier diverge (its training loss rose above
# chance in the first 25 steps; without them it fell) — seen on SYN SIGNS → GTSRB with source
# labels alone, after the recipe's pre-registered evaluation there (selftraining.md).
ADAPT_RECIPE: dict[str, Any] = {"method": "dann_fixmatch", "epochs": 20, "steps_per_epoch": 1000,
                                "ema_decay": 0.999, "input_norm": "auto", "select": "im"}
AUTO_INPUT_NORM_NETWORK = "mnist"
# The paper's pairs keep the paper's settings (its table is measured with them), and a --backbone
# keeps plain DANN-style defaults (the recipe was not developed on pretrained networks).
PLAIN_DEFAULTS: dict[str, Any] = {"method": "dann_fixmatch", "epochs": 10, "steps_per_epoch": None,
                                  "ema_decay": None, "input_norm": None, "select": None}


def takes_recipe(source: str, target: str, backbone: str | None = None) -> bool:
    """Whether :data:`ADAPT_RECIPE` is the default: a pair outside the paper's table, adapted
    on one of the paper's digit networks."""
    on_digit_network = backbone is None or is_digit_network(backbone)
    return on_digit_network and (source, target) not in PAIR_NETWORKS


def adapt_defaults(source: str, target: str, backbone: str | None = None,
                   method: str | None = None) -> dict[str, Any]:
    """The settings ``transferkit adapt`` uses where none is given: :data:`ADAPT_RECIPE` for a
    pair outside the paper's table on a digit network; otherwise :data:`PLAIN_DEFAULTS` (the
    paper's pairs, whose table was measured with the paper's settings, and any ``backbone``).
    SA chooses no epoch (its network is the source-only one)."""
    settings = dict(ADAPT_RECIPE if takes_recipe(source, target, backbone) else PLAIN_DEFAULTS)
    if method is not None:
        settings["method"] = method
    if settings["method"] == "sa":
        settings["select"] = None
    return settings


def extract_features(model: Method, split: DomainSplit, pair: DomainPair) -> np.ndarray:
    """SA's descriptors of ``split``: the label predictor's last hidden layer (§5.2.1)."""
    return run_batches(model, split.images, pair, output="hidden").numpy()


def fit_alignment(model: Method, pair: DomainPair, seed: int) -> SubspaceAlignment:
    """SA on ``model``'s hidden layer: source train and target train aligned, the size chosen
    on the source test split (or a held-out tenth of source train)."""
    source = extract_features(model, pair.source_train, pair)
    labels = pair.source_train.labels.numpy()
    if pair.source_test is not None:
        val, val_labels = extract_features(model, pair.source_test, pair), \
            pair.source_test.labels.numpy()
        train, train_labels = source, labels
    else:  # hold out a tenth of the source for choosing the subspace size
        kept, held = held_out_tenth(len(source), seed)
        train, train_labels, val, val_labels = source[kept], labels[kept], source[held], \
            labels[held]
    target = extract_features(model, pair.target_train, pair)
    return SubspaceAlignment(seed=seed).fit(train, train_labels, target, val, val_labels)


ALIGNMENT_FILE = "alignment.safetensors"  # SA's fitted alignment, beside model.safetensors


def run_alignment(run: Path, model: Method, pair: DomainPair, seed: int) -> SubspaceAlignment:
    """A finished SA run's alignment as it saved it; runs made before SA saved it are fitted
    again on ``model``, which can differ slightly on another thread count where a logistic
    regression stopped at its iteration limit."""
    saved = Path(run) / ALIGNMENT_FILE
    if saved.is_file():
        try:
            return SubspaceAlignment.from_state_dict(load_arrays(str(saved)))
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TransferkitError(f"{saved}: not a readable alignment, corrupt or truncated "
                                   f"({detail}); remove it to fit the alignment again") from None
    return fit_alignment(model, pair, seed)


# How a finished run's model wants its images (size, geometry, normalization, class names):
# what `transferkit predict` needs without the run's data sets.
PREPROCESSING_FILE = "preprocessing.json"


def method_of_run(run: Path, config: dict[str, Any], classes: int,
                  data_root: str | None = None) -> Method:
    """A finished adapt run's trained method: its network as ``config.json`` describes it
    (a backbone built without downloading: every weight comes from the run), its weights from
    ``model.safetensors``, read without unpickling. The one loader of a run's model."""
    method = trained_method(config["method"])(network_of_run(config, classes, data_root=data_root))
    weights = Path(run) / "model.safetensors"
    state = read_safetensors(weights, "train the run again (transferkit adapt with its settings and "
                             "--restart) or restore the file")
    try:
        method.load_state_dict(state)
    except RuntimeError as exc:
        raise TransferkitError(f"{weights}: does not match the network its config.json names "
                               f"({str(exc).splitlines()[0]})") from None
    return method


def preprocessing(pair: DomainPair, geometry: str | None) -> dict[str, Any]:
    """What ``preprocessing.json`` records of a run's pair: size, geometry, normalization, classes."""
    return {"image_size": pair.image_size, "geometry": geometry or "resize", "mean": pair.mean.tolist(),
            "std": pair.std.tolist() if pair.std is not None else [1.0] * len(pair.mean),
            "classes": list(pair.classes)}


class AdaptedModel(torch.nn.Module):
    """A finished ``transferkit adapt`` run's model for new images: its network, trained
    weights and preprocessing (``preprocessing.json``), without its data sets."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        run = Path(run_dir)
        config = read_run_config(run)
        if config["method"] == "sa":
            raise TransferkitError(f"{run}: an SA run classifies through its fitted alignment, "
                                   "not a network; predict with DomainAdapter.load(run).predict")
        path = run / PREPROCESSING_FILE
        try:
            if path.is_file():
                prep = json.loads(path.read_text())
            else:  # a run made before runs wrote it: its pair says (the data are read once)
                prep = preprocessing(pair_of_run(config), config.get("geometry"))
                write_json(path, prep)
            self.record = prep  # the run's preprocessing record, as it is on disk
            self.image_size, self.geometry = int(prep["image_size"]), str(prep["geometry"])
            self.classes = tuple(prep["classes"])
            mean, std = prep["mean"], prep["std"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferkitError(f"{path}: unreadable ({exc}); train the run again") from None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.method = method_of_run(run, config, len(self.classes)).eval()

    def read(self, path: Path) -> torch.Tensor:
        """One image file as uint8 C×H×W in the run's form (resized, or center-cropped/padded)."""
        from transferkit.data.decode import read_image_file
        from transferkit.data.pairs import center_to

        pixels = torch.from_numpy(np.array(read_image_file(path, "RGB"))).permute(2, 0, 1).unsqueeze(0)
        if pixels.shape[-2:] == (self.image_size, self.image_size):
            return pixels[0]
        if self.geometry == "center":
            return center_to(pixels, self.image_size)[0]
        resized = torch.nn.functional.interpolate(pixels.float(), size=(self.image_size,) * 2,
                                                  mode="bilinear", antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)[0]

    def read_steps(self) -> list[dict[str, Any]]:
        """What :meth:`read` does to a decoded RGB image, for a caller without transferkit
        (``transferkit export`` writes it beside the model). Keep the two in step."""
        size = [self.image_size, self.image_size]
        if self.geometry == "center":
            return [{"op": "center_crop_or_pad", "size": size,
                     "does": "unless the image is already this size: center-crop the sides longer "
                             "than it and zero-pad the sides shorter than it, pixel scale kept; crop "
                             "offset floor((side - size) / 2), padding floor((size - side) / 2) before "
                             "and the rest after"}]
        return [{"op": "resize", "size": size, "interpolation": "bilinear", "antialias": True,
                 "does": "unless the image is already this size: resize it to exactly this size "
                         "(aspect ratio not kept; torch.nn.functional.interpolate, bilinear, "
                         "antialias=True, align_corners=False, on float pixels), rounded to the "
                         "nearest integer and clipped to 0..255"}]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of uint8 N×C×H×W images in the run's form."""
        from transferkit.data.imaging import standardize

        return self.method(standardize(images.float().div(255.0), self.mean, self.std))


# Settings a run may change when it resumes; any other difference is another run.
RESUMABLE_CHANGES = frozenset({"device"})

# The files that make a folder hold a run (begun or finished), and those --restart discards:
# metrics.json first, the mark of a finished run, so an interrupted discard is never a
# finished run with pieces missing. reverse_validation.json scored the discarded model.
RUN_FILES = ("checkpoint.pt", "metrics.json", "model.safetensors")
DISCARDED_ON_RESTART = ("metrics.json", "model.safetensors", "alignment.safetensors",
                        "reverse_validation.json", CHECKPOINT, METRICS_LINES)


def check_same_run(run_dir: Path, record: dict[str, Any], started_by: tuple[str, ...] = RUN_FILES,
                   resumable: frozenset[str] = RESUMABLE_CHANGES,
                   unreadable_ok: bool = False) -> None:
    """Refuse to resume or reuse ``run_dir`` when it holds a run with other settings.

    A checkpoint or result made with, say, 10 epochs must not be continued or reported as a
    20-epoch run: the schedules depend on the whole budget. See
    :func:`transferkit.training.runfolder.check_same_settings`.
    """
    check_same_settings(run_dir, record, started_by, resumable, unreadable_ok)


RUN_KEYS = ("method", "source", "target", "network", "image_size", "epochs", "batch_size",
            "learning_rate", "steps_per_epoch", "seed")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a ``transferkit adapt`` run, or an error naming what is wrong."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TransferkitError(f"{run_dir}: no config.json — expected the folder of a "
                               "`transferkit adapt` run")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransferkitError(f"{path}: not readable JSON ({exc})") from None
    missing = [key for key in RUN_KEYS if key not in config] if isinstance(config, dict) \
        else list(RUN_KEYS)
    if missing:
        raise TransferkitError(f"{path}: not the config.json of an adapt run (missing "
                               f"{', '.join(missing)})")
    return config


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class DomainAdapter:
    """Unsupervised domain adaptation from a labelled source to an unlabelled target.

    ``method``: ``source_only``, ``sa`` (Subspace Alignment on the source-only network's
    features), ``dann``, ``target_only`` (oracle: trains on target labels), ``dann_mcc``
    (DANN + Minimum Class Confusion on the target batch, :mod:`transferkit.methods.mcc`),
    ``cdan`` (CDAN+E, the domain classifier conditioned on the class predictions,
    :mod:`transferkit.methods.cdan`), ``vada`` (DANN + conditional entropy on the target +
    virtual adversarial training, :mod:`transferkit.methods.vada`) or ``dann_fixmatch``
    (DANN + self-training with consistency, :mod:`transferkit.methods.fixmatch`).
    Model selection never looks at target-test labels: the last epoch is kept
    (``selected_by`` says so), and SA's subspace size is chosen on source data.
    ``ema_decay``: keep an exponential moving average of the weights during training and
    make it the model (see :func:`transferkit.training.loop.weight_average`); the last-epoch
    weights' accuracies are still recorded, beside it, in ``metrics.json``.
    """

    def __init__(self, method: str = "dann", network: str | None = None,
                 image_size: int | None = None, epochs: int = 10, batch_size: int = 64,
                 learning_rate: float = 0.01, steps_per_epoch: int | None = None,
                 seed: int = 0, device: str = "auto", run_dir: str | Path | None = None,
                 data_root: str | Path | None = None, init_from: str | Path | None = None,
                 binarize_source: bool = False, geometry: str | None = None,
                 ema_decay: float | None = None, progress: bool = True,
                 restart: bool = False, backbone: str | None = None, weights: str = "imagenet",
                 unfreeze: int | str = "all", bottleneck: int | None = BOTTLENECK,
                 log: str | None = None, precision: str | None = None,
                 keep_epochs: bool = False, input_norm: str | None = None,
                 select: str | None = None) -> None:
        if method not in METHOD_NAMES:
            raise TransferkitError(f"--method {method}: expected one of {', '.join(METHOD_NAMES)}")
        if network is not None and network not in NETWORKS:
            raise TransferkitError(f"--network {network}: expected one of {', '.join(NETWORKS)}")
        if backbone is not None and is_digit_network(backbone):  # the paper's networks by name
            if network is not None and network != backbone:
                raise TransferkitError(f"--network {network} and --backbone {backbone}: give one")
            network, backbone = backbone, None
        if backbone is not None and network is not None:
            raise TransferkitError(f"--network {network} and --backbone {backbone}: give one (--network "
                                   "names the paper's digit networks, --backbone any other)")
        if backbone is None and (weights != "imagenet" or unfreeze != "all" or bottleneck != BOTTLENECK):
            raise TransferkitError("--weights, --unfreeze and --bottleneck apply to a --backbone; the "
                                   "paper's digit networks train from scratch, whole")
        if backbone is not None and batch_size < 2:  # BatchNorm needs two images to normalize
            raise TransferkitError(f"--batch-size {batch_size}: a --backbone network has BatchNorm "
                                   "layers, which need batches of at least 2 images")
        if weights not in ("imagenet", "random", "trained"):  # a file: found again from anywhere
            weights = str(Path(weights).expanduser().resolve())
        if input_norm in ("none", ""):
            input_norm = None
        if input_norm == "auto" and backbone is not None:  # "where it was developed": not here
            input_norm = None
        if input_norm is not None and input_norm not in (*INPUT_NORMS, "auto"):
            raise TransferkitError(f"--input-norm {input_norm}: expected one of "
                                   f"{', '.join(INPUT_NORMS)}, auto or none")
        if input_norm is not None and backbone is not None:
            raise TransferkitError("--input-norm applies to the paper's digit networks; a --backbone "
                                   "normalizes its inputs its own way")
        self.input_norm = input_norm
        if select in ("last", ""):
            select = None
        if select is not None and select not in SELECTORS:
            raise TransferkitError(f"--select {select}: expected one of last, {', '.join(SELECTORS)}")
        if select is not None and method == "sa":
            raise TransferkitError("--select chooses a trained network's epoch; SA's subspace size is "
                                   "chosen on source data, and its network is the source-only one")
        if select is not None and run_dir is None:
            raise TransferkitError("--select chooses among the epochs a run keeps in its folder: "
                                   "give the run a folder (--out, run_dir)")
        self.select = select
        self.backbone = backbone
        self.weights = weights
        self.unfreeze = unfreeze
        self.bottleneck = bottleneck
        if epochs < 1:
            raise TransferkitError(f"--epochs {epochs}: expected a positive number")
        self.method = method
        self.network = network
        self.image_size = image_size
        self.config = TrainConfig(epochs=epochs, batch_size=batch_size,
                                  learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
                                  seed=seed, device=device,
                                  precision=None if precision in (None, "fp32") else precision)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.data_root = data_root
        self.init_from = Path(init_from) if init_from is not None else None
        self.binarize_source = binarize_source
        if geometry is not None and geometry not in GEOMETRIES:
            raise TransferkitError(f"--geometry {geometry}: expected one of {', '.join(GEOMETRIES)}")
        self.geometry = geometry
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise TransferkitError(f"--ema-decay {ema_decay}: expected a number strictly "
                                   "between 0 and 1 (such as 0.999)")
        self.ema_decay = ema_decay
        self.progress = progress
        self.restart = restart
        self.log = check_log(log)  # how the run is watched, not a setting of the run
        # what the run keeps, not a setting of the run either (--select needs every epoch)
        self.keep_epochs = keep_epochs or select is not None

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, source: str | DomainPair, target: str | None = None) -> DomainAdapter:
        """Train on ``source → target`` (or a loaded :class:`DomainPair`). With a ``run_dir``
        the folder is locked for the whole fit (another process writing it gets one line), a
        run of the same settings resumes from its checkpoint (``restart``: its checkpoint,
        metrics and model are discarded first and it trains from the start), and a folder
        holding a run of other settings is refused."""
        clock = RunClock()
        if distributed.launched() and self.select is not None:
            raise TransferkitError("--select under torchrun: the kept epochs are written by rank 0 "
                                   "alone; run it in one process, or choose afterwards")
        if distributed.launched() and trained_method(self.method).perturbs_inputs:
            raise TransferkitError(f"--method {self.method} under torchrun: its input-perturbation "
                                   "passes are not supported across processes yet; run it in one process")
        # under torchrun: join the process group; rank 0 alone holds the lock and writes
        self.config = replace(self.config, device=distributed.setup(self.config.device))
        if self.run_dir is None:
            return self._fit(source, target, clock)
        with distributed.writer_only(locked(self.run_dir)):
            return self._fit(source, target, clock)

    def _fit(self, source: str | DomainPair, target: str | None, clock: RunClock) -> DomainAdapter:
        device = resolve_device(self.config.device)
        if isinstance(source, DomainPair):
            pair = source
        else:
            if target is None:
                raise TransferkitError("fit(source, target): the target data set is missing")
            network, size = self.network, self.image_size
            if self.backbone is not None and size is None:  # the backbone's own input size
                size = self.image_size = self._build_network(2, None).image_size
            if self.backbone is None and (network is None or size is None):
                from transferkit.data.loading import load_split

                classes = load_split(source, "train", self.data_root).classes
                default = default_network(source, target, len(classes))
                network, size = network or default[0], size or default[1]
                self.network, self.image_size = network, size
            if self.geometry is None:
                self.geometry = default_geometry(source, target)
            pair = load_pair(source, target, size=size, data_root=self.data_root,
                             binarize_source=self.binarize_source, geometry=self.geometry)
        if pair.target_test is None and trained_method(self.method).oracle:
            raise TransferkitError(f"--method {self.method} trains on target labels, and "
                                   f"{pair.target} has none")
        if self.backbone is None:
            self.network = self.network or default_network(pair.source, pair.target,
                                                           len(pair.classes))[0]
        if self.input_norm == "auto":  # instance normalization where the recipe was developed
            self.input_norm = "instance" if self.network == AUTO_INPUT_NORM_NETWORK else None
        torch.manual_seed(self.config.seed)  # the same initial weights for every method
        network = self._build_network(len(pair.classes), pair.image_size)
        if self.backbone is not None:  # the backbone's own input normalization
            spec = network.backbone.spec
            pair = pair.with_normalization(spec.mean, spec.std)
        self.pair_ = pair
        finished_seconds = None
        if self.run_dir is not None:
            record = self.run_settings(pair.source, pair.target, pair.image_size)
            if distributed.is_writer():
                check_same_run(self.run_dir, record, unreadable_ok=self.restart)
                if self.restart:
                    discard(self.run_dir, DISCARDED_ON_RESTART)
                finished_seconds = previous_wall_seconds(self.run_dir)
                write_config(self.run_dir, record)
            distributed.barrier()  # the other ranks read the folder rank 0 has settled

        self.last_weights_: Method | None = None  # set when the model is a weight average
        self.model_ = trained_method(self.method)(network)
        if self.method == "sa" and self.init_from is not None:
            state = read_safetensors(self.init_from, "expected the model.safetensors of a "
                                     "finished source_only run of this pair")
            try:
                self.model_.load_state_dict(state)
            except RuntimeError as exc:
                raise TransferkitError(f"{self.init_from}: not a model of this network "
                                       f"({str(exc).splitlines()[0]})") from None
            self.model_.to(device)
            self.history_: list[dict[str, Any]] = []
        else:
            average = (weight_average(self.model_, self.ema_decay)
                       if self.ema_decay is not None else None)
            data: DomainPair | FitData = pair
            reading: Any = contextlib.nullcontext()
            # "streamed": read from the memory-mapped common form on disk (too large for memory)
            self.inputs_ = "streamed" if pair.streamed else "images"
            self._prefix_cache_: FitData | None = None
            if self._reads_cached_prefix(network, pair, device):
                # the frozen stages run once per image here, not at every step of every epoch
                self.model_.to(device)
                data = with_cached_prefix(pair_data(self.model_, pair, device), network.backbone,
                                          network.split, device, self.progress)
                networks = [network] + ([average.module.network] if average is not None else [])
                reading = reading_prefix(*networks)
                self.inputs_ = f"frozen prefix ({network.backbone.stage_names[network.split - 1]}) cached"
                self._prefix_cache_ = data  # the final scores reuse these activations
            run_log = open_log(self.log, self.run_dir)
            try:
                with reading:
                    self.history_ = fit(self.model_, data, self.config, self.run_dir, self.progress,
                                        average=average, clock=clock, log=run_log,
                                        keep_epochs=self.keep_epochs)
            finally:
                if run_log is not None:
                    run_log.close()
            if average is not None:  # the average is the model; the last weights stay on record
                self.last_weights_ = self.model_
                self.model_ = average.module
        self.selection_: tuple[int, dict[int, float]] | None = None
        if self.select is not None and self.method != "sa":
            assert self.run_dir is not None
            self.selection_ = choose_epoch(self.model_, pair, self.run_dir / EPOCHS_FOLDER,
                                           self.select)
        self.alignment_: SubspaceAlignment | None = None
        if self.method == "sa":
            self.alignment_ = fit_alignment(self.model_, pair, self.config.seed)
        # The run's own time, kept across resumes: a rerun that trained nothing reports the
        # finished run's time, not its own few seconds of loading and scoring.
        if not clock.trained and finished_seconds is not None:
            self.wall_seconds_ = finished_seconds
        else:
            self.wall_seconds_ = clock.total()
        self.device_ = device
        self.as_recorded_ = False  # True: a finished run, reported as it was recorded
        if self.run_dir is not None:
            finished = self.run_dir / "metrics.json"
            if not clock.trained and finished.is_file() and (self.run_dir / "model.safetensors").is_file():
                # a finished run, rerun: reported as it was recorded (its device, machine and
                # memory), not rescored and rewritten by this call
                try:
                    self.results_ = json.loads(finished.read_text())
                    self.as_recorded_ = True
                except (OSError, json.JSONDecodeError):
                    if distributed.is_writer():
                        self._write_results()
                    else:
                        self.results_ = self.results()
            elif distributed.is_writer():
                self._write_results()
            else:  # the same results; rank 0 writes them
                self.results_ = self.results()
            self._prefix_cache_ = None  # scored: the cached activations' memory goes back
        return self

    def _reads_cached_prefix(self, network: Any, pair: DomainPair, device: torch.device) -> bool:
        """Whether to train on the frozen prefix's outputs, computed once, instead of images: a
        backbone network with frozen stages, a method that does not perturb its input images,
        and outputs that take at most :data:`PREFIX_CACHE_BYTES`."""
        if not isinstance(network, BackboneClassifier) or network.split == 0:
            return False
        if trained_method(self.method).perturbs_inputs:
            return False
        count = len(pair.source_train) + len(pair.target_train) + len(pair.source_test or ())
        image = pair.normalize(pair.source_train.images[:1]).to(device)[0]
        network.to(device)
        return prefix_bytes(network.backbone, network.split, image, count) <= PREFIX_CACHE_BYTES

    @classmethod
    def load(cls, run_dir: str | Path, data_root: str | Path | None = None,
             device: str = "cpu", progress: bool = True) -> DomainAdapter:
        """A finished ``transferkit adapt`` run, ready for ``predict`` and ``score``: its
        settings from ``config.json``, its model from ``model.safetensors`` (read without
        unpickling), its data reloaded, SA's alignment from :func:`run_alignment`."""
        run = Path(run_dir)
        config = read_run_config(run)
        weights_path = run / "model.safetensors"
        if not weights_path.is_file():
            raise TransferkitError(f"{run}: no model.safetensors — expected the folder of a "
                                   "finished `transferkit adapt` run")
        if config["method"] == "sa" and config.get("sa_features") != SA_FEATURES:
            aligned = config.get("sa_features") or "the feature extractor's output"
            raise TransferkitError(
                f"{run}: an SA run that aligned {aligned} (an older transferkit); SA now aligns "
                f"{SA_FEATURES} — fit it again with `transferkit adapt --method sa` into "
                "another folder")
        settings = {key: config[key] for key in RUN_KEYS if key not in ("source", "target")}
        backbone = {key: config[key] for key in ("backbone", "weights", "unfreeze", "bottleneck")
                    if key in config}
        adapter = cls(**settings, device=device, data_root=data_root,
                      binarize_source=config.get("binarize_source", False),
                      geometry=config.get("geometry", "resize"),
                      ema_decay=config.get("ema_decay"), progress=progress,
                      input_norm=config.get("input_norm"), **backbone)
        adapter.select = config.get("select")  # how the saved model was chosen
        pair = pair_of_run(config, data_root)
        model = method_of_run(run, config, len(pair.classes),
                              str(data_root) if data_root is not None else None)
        adapter.device_ = resolve_device(device)
        adapter.pair_, adapter.model_, adapter.last_weights_ = pair, model.eval(), None
        model.to(adapter.device_)
        adapter.alignment_ = (run_alignment(run, adapter.model_, pair, adapter.config.seed)
                              if adapter.method == "sa" else None)
        return adapter

    def _build_network(self, classes: int, image_size: int | None) -> torch.nn.Module:
        """The paper's digit network (``network``) or ``backbone`` with a new bottleneck and
        head (:func:`transferkit.models.classifier.build_network`)."""
        if self.backbone is None:
            return DigitNetwork(self.network, classes, image_size, input_norm=self.input_norm)
        return build_network(self.backbone, classes, image_size, self.weights,
                             self.unfreeze, self.bottleneck,
                             str(self.data_root) if self.data_root is not None else None)

    # -- using the fitted model --------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise TransferkitError("call fit(source, target) before predict or score")

    def predict(self, images: torch.Tensor, domain: str = "target") -> torch.Tensor:
        """Class indices for uint8 N×C×H×W images in the pair's preprocessed form. ``domain``
        matters to SA only, which projects source and target images differently."""
        self._check_fitted()
        if self.alignment_ is not None:
            features = run_batches(self.model_, images, self.pair_, output="hidden").numpy()
            return torch.from_numpy(self.alignment_.predict(features, domain))
        return run_batches(self.model_, images, self.pair_).argmax(1)

    def _cached_logits(self, split: str) -> torch.Tensor | None:
        """Logits of one of the pair's splits (``target_train``, ``source_test``,
        ``target_test``) for a run trained on cached prefix activations, computed from those
        activations: the ones this fit cached, else the split's prefix outputs from the disk
        cache (computed and kept there the first time), so that scoring a run, and every later
        run on the same images, does not run the frozen stages again. None for other runs."""
        cache = getattr(self, "_prefix_cache_", None)
        if cache is None or getattr(self, "alignment_", None) is not None:
            return None
        if split == "target_train" and cache.target is not None:
            inputs = cache.target
        elif split == "source_test" and cache.monitor is not None and \
                self.model_.monitor_split(self.pair_) is self.pair_.source_test:
            inputs = cache.monitor
        else:
            data = getattr(self.pair_, split, None)
            if not isinstance(data, DomainSplit):
                return None
            network = self.model_.network
            images = InMemory(data.images, self.pair_.normalize, self.device_)
            inputs = CachedInputs([disk_prefix(network.backbone, network.split, images, self.device_,
                                               self.progress, split)], self.device_)
        with reading_prefix(self.model_.network):
            return predict(self.model_, inputs, cache.eval_batch_size)

    def prediction_shares(self) -> PredictionShares:
        """The label-free check of :mod:`transferkit.checks`: the share of the unlabelled
        target training images the model gives each class, beside each class's share of the
        source labels; ``.message()`` says which classes look wrong, if any."""
        self._check_fitted()
        cached = self._cached_logits("target_train")
        predicted = (cached.argmax(1) if cached is not None
                     else self.predict(self.pair_.target_train.images, "target"))
        return prediction_shares(predicted, self.pair_.source_train.labels, self.pair_.classes)

    def score(self, split: str = "target_test") -> float:
        """Accuracy on one of the pair's labelled splits (default: the final target-test)."""
        self._check_fitted()
        if split.startswith("target") and self.pair_.target_test is None:
            raise TransferkitError(f"score({split!r}): {self.pair_.target} is unlabelled: there is "
                                   "no target accuracy (prediction_shares() is the label-free check)")
        data = getattr(self.pair_, split, None)
        if not isinstance(data, DomainSplit):
            raise TransferkitError(f"score({split!r}): expected target_test, source_test, "
                                   "source_train or target_train")
        if self.alignment_ is None:
            cached = self._cached_logits(split)
            if cached is not None:
                return float((cached.argmax(1) == data.labels.cpu()).float().mean())
            return evaluate(self.model_, data, self.pair_)
        domain = "source" if split.startswith("source") else "target"
        return float((self.predict(data.images, domain) == data.labels).float().mean())

    # -- run directory ------------------------------------------------------------------------

    def run_settings(self, source: str, target: str, image_size: int) -> dict[str, Any]:
        """What ``config.json`` records and :func:`check_same_run` compares: every setting of
        this adapter on ``source → target`` at ``image_size``."""
        backbone = {}
        if self.backbone is not None:  # recorded only for backbone runs: digit runs read as before
            if hasattr(self, "pair_"):
                spec_mean, spec_std = self.pair_.mean.tolist(), self.pair_.std.tolist()
            else:  # not fitted (a benchmark checking a finished run): the backbone's own constants
                with torch.random.fork_rng(devices=[]):  # building draws initial weights
                    spec = self._build_network(2, image_size).backbone.spec
                # as the fitted pair holds them (float32), so that the two compare equal
                spec_mean = torch.tensor(spec.mean, dtype=torch.float32).tolist()
                spec_std = torch.tensor(spec.std, dtype=torch.float32).tolist()
            backbone = {"backbone": self.backbone, "weights": self.weights,
                        "unfreeze": self.unfreeze, "bottleneck": self.bottleneck,
                        "normalization": {"mean": spec_mean, "std": spec_std}}
        return {"method": self.method, "source": source, "target": target,
                "network": self.network, "image_size": image_size,
                "binarize_source": self.binarize_source, "geometry": self.geometry,
                "ema_decay": self.ema_decay, **asdict(self.config), **backbone,
                # recorded only when set: runs made before them read as before
                **({"input_norm": self.input_norm} if self.input_norm is not None else {}),
                **({"select": self.select} if self.select is not None else {}),
                **({"sa_features": SA_FEATURES} if self.method == "sa" else {})}

    def results(self) -> dict[str, Any]:
        self._check_fitted()
        rates = [h["images_per_second"] for h in self.history_]
        fractions = [h["data_fraction"] for h in self.history_]
        record = {
            "method": self.method,
            "source": self.pair_.source,
            "target": self.pair_.target,
            "seed": self.config.seed,
            "oracle": self.method == "target_only",
            "target_test_accuracy": (self.score("target_test")
                                     if self.pair_.target_test is not None else None),
            "source_test_accuracy": (self.score("source_test")
                                     if self.pair_.source_test is not None else None),
            "selected_by": ("last_epoch" if self.ema_decay is None
                            else f"weight average (EMA, decay {self.ema_decay}) at the last epoch"),
            "epochs": self.config.epochs,
            "wall_seconds": self.wall_seconds_,
            "inputs": getattr(self, "inputs_", "images"),
            "device": str(self.device_),
            "machine": describe_machine(self.device_),
            "threads": torch.get_num_threads(),
            "network": self.network,
            **({"backbone": self.backbone} if self.backbone is not None else {}),
            "image_size": self.pair_.image_size,
            "binarize_source": self.binarize_source,
            "geometry": self.geometry,
            "images_per_second": statistics.median(rates) if rates else None,
            "data_fraction": statistics.median(fractions) if fractions else None,
            "peak_memory_mb": _peak_memory_mb(self.device_),
        }
        if self.ema_decay is not None:
            record["ema_decay"] = self.ema_decay
        if getattr(self, "selection_", None) is not None:
            chosen, scores = self.selection_
            kind = "weight average (EMA)" if self.ema_decay is not None else "weights"
            record["selected_by"] = (f"{self.select} (label-free) among the {kind} kept at each "
                                     f"epoch: epoch {chosen} of {len(scores)}")
            record["selected_epoch"] = chosen
            record["epoch_scores"] = {str(k): v for k, v in sorted(scores.items())}
        record["label_free_check"] = self.prediction_shares().as_dict()
        last = self.last_weights_
        if last is not None:
            record["last_epoch_weights"] = {
                "target_test_accuracy": (evaluate(last, self.pair_.target_test, self.pair_)
                                         if self.pair_.target_test is not None else None),
                "source_test_accuracy": (evaluate(last, self.pair_.source_test, self.pair_)
                                         if self.pair_.source_test is not None else None),
            }
        if self.alignment_ is not None:
            record["selected_by"] += "; subspace size by source_validation"
            record["sa_features"] = SA_FEATURES
            record["sa_dimension"] = self.alignment_.selected_dimension
            record["sa_source_validation"] = self.alignment_.validation_accuracy
            if self.alignment_.not_converged:
                record["sa_not_converged"] = self.alignment_.not_converged
            # The paper chose d on the target test set; every size's target-test accuracy is
            # kept so a report can show that oracle beside the honest choice. Not used above.
            test = self.pair_.target_test
            if test is not None:
                record["sa_oracle_target_test"] = self.alignment_.accuracy_by_dimension(
                    extract_features(self.model_, test, self.pair_), test.labels.numpy())
            if self.init_from is not None:
                record["sa_features_from"] = str(self.init_from)
        return record

    def _write_results(self) -> None:
        """model.safetensors (and SA's alignment), then metrics.json, the mark of a finished
        run: each replaced whole, so a full disk leaves the previous file, not half of one."""
        assert self.run_dir is not None
        save_tensors(self.run_dir / "model.safetensors", self.model_.state_dict())
        write_json(self.run_dir / PREPROCESSING_FILE, preprocessing(self.pair_, self.geometry))
        if self.alignment_ is not None:
            data = arrays_bytes(self.alignment_.state_dict())
            replace_file(self.run_dir / ALIGNMENT_FILE, lambda handle: handle.write(data))
        self.results_ = self.results()
        write_json(self.run_dir / "metrics.json", self.results_)
