"""Data larger than memory: a pair that does not fit is streamed from its memory-mapped
common form on disk, with the same batches — hence the same weights — as in memory."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_module
import time

import numpy as np
import pytest
import torch
from fakes import write_digit_pair

from transferkit import DomainAdapter
from transferkit.data import load_pair
from transferkit.data import pairs as pairs_module
from transferkit.data.root import cache_dir
from transferkit.errors import TransferkitError
from transferkit.training import batches


@pytest.fixture
def digit_root(tmp_path):
    return write_digit_pair(tmp_path / "data", n_train=48, n_test=16)


def _common_files():
    folder = cache_dir() / "common"
    return sorted(folder.glob("*")) if folder.is_dir() else []


def _adapt(digit_root, out, **settings):
    adapter = DomainAdapter(method="dann", epochs=2, steps_per_epoch=3, batch_size=8, device="cpu",
                            run_dir=out, data_root=digit_root, progress=False, **settings)
    return adapter.fit("mnist", "mnist_m")


def test_streamed_and_in_memory_runs_train_to_identical_weights(digit_root, tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFERKIT_MEMORY_BUDGET", raising=False)
    in_memory = _adapt(digit_root, tmp_path / "memory", ema_decay=0.9)
    assert not in_memory.pair_.streamed
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    streamed = _adapt(digit_root, tmp_path / "streamed", ema_decay=0.9)
    assert streamed.pair_.streamed and streamed.pair_.target_test.path is not None
    # the same sample order from the same generator, the same pixels, the same arithmetic
    mine, theirs = in_memory.model_.state_dict(), streamed.model_.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(in_memory.pair_.mean, streamed.pair_.mean)
    losses = [{k: v for k, v in h.items() if k.endswith("loss") or k.endswith("accuracy")}
              for h in in_memory.history_]
    assert losses == [{k: v for k, v in h.items() if k.endswith("loss") or k.endswith("accuracy")}
                      for h in streamed.history_]
    memory_record = json.loads((tmp_path / "memory" / "metrics.json").read_text())
    streamed_record = json.loads((tmp_path / "streamed" / "metrics.json").read_text())
    assert memory_record["inputs"] == "images" and streamed_record["inputs"] == "streamed"
    assert memory_record["target_test_accuracy"] == streamed_record["target_test_accuracy"]


def test_the_common_form_on_disk_is_the_one_in_memory(digit_root, monkeypatch, capsys):
    settings = dict(data_root=digit_root, geometry="resize", size=36, binarize_source=True)
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", str(10**12))
    in_memory = load_pair("mnist", "mnist_m", **settings)
    assert not in_memory.streamed and "streaming" not in capsys.readouterr().err
    monkeypatch.setattr(pairs_module, "CHUNK_BYTES", 5 * 3 * 36 * 36)  # several chunks a split
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    streamed = load_pair("mnist", "mnist_m", **settings)
    notice = capsys.readouterr().err
    assert notice.count("streaming mnist → mnist_m") == 1 and "memory budget of 0 GB" in notice
    for split in ("source_train", "source_test", "target_train", "target_test"):
        a, b = getattr(in_memory, split), getattr(streamed, split)
        assert b.path is not None and b.path.is_file() and a.path is None
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(in_memory.mean, streamed.mean)


def test_the_memory_budget_is_half_the_available_memory_unless_set(monkeypatch):
    monkeypatch.delenv("TRANSFERKIT_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(pairs_module, "_memory_available", lambda: 8_000)
    assert pairs_module.memory_budget() == 4_000
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "123")
    assert pairs_module.memory_budget() == 123
    for bad in ("-1", "lots", "1.5"):
        monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", bad)
        with pytest.raises(TransferkitError, match="TRANSFERKIT_MEMORY_BUDGET"):
            pairs_module.memory_budget()
    monkeypatch.undo()
    assert (pairs_module._memory_available() or 1) > 0  # /proc/meminfo here, or sysconf


def test_the_common_form_is_written_once_and_reused(digit_root, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    load_pair("mnist", "mnist_m", data_root=digit_root)
    files = _common_files()
    assert len([f for f in files if f.suffix == ".npy"]) == 4
    assert len([f for f in files if f.suffix == ".json"]) == 4  # no temporary file left behind
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    calls = []
    real = pairs_module.to_common_form
    monkeypatch.setattr(pairs_module, "to_common_form", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load_pair("mnist", "mnist_m", data_root=digit_root)
    assert calls == [] and again.streamed
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in _common_files()} == stamps


def test_an_interrupted_write_leaves_no_file(digit_root, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    monkeypatch.setattr(pairs_module, "CHUNK_BYTES", 8 * 3 * 28 * 28)
    real, calls = pairs_module.to_common_form, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first split's third chunk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs_module, "to_common_form", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_pair("mnist", "mnist_m", data_root=digit_root)
    assert _common_files() == []  # neither a half file under its name nor a temporary one
    monkeypatch.setattr(pairs_module, "to_common_form", real)
    assert load_pair("mnist", "mnist_m", data_root=digit_root).streamed


@pytest.mark.parametrize("damage", ["truncate", "header", "record", "no_record", "longer"])
def test_a_damaged_common_form_is_detected_and_rebuilt(digit_root, monkeypatch, damage):
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    first = load_pair("mnist", "mnist_m", data_root=digit_root)
    path = first.target_train.path
    expected = first.target_train.images.clone()
    size = path.stat().st_size
    del first
    record = path.with_suffix(".json")
    if damage == "truncate":
        os.truncate(path, size - 1000)
    elif damage == "header":
        with open(path, "r+b") as handle:
            handle.write(b"\0" * 64)
    elif damage == "record":
        record.write_text("{not json")
    elif damage == "no_record":
        record.unlink()
    else:  # a file longer than its record says (another shape written over it)
        with open(path, "ab") as handle:
            handle.write(b"\0" * 3072)
    again = load_pair("mnist", "mnist_m", data_root=digit_root)
    assert again.target_train.path == path and path.stat().st_size == size
    assert torch.equal(again.target_train.images, expected)
    assert json.loads(record.read_text())["bytes"] == size


def test_streamed_batches_are_the_in_memory_ones_in_the_plan_order(digit_root, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    pair = load_pair("mnist", "mnist_m", data_root=digit_root)
    device = torch.device("cpu")
    streamed = batches.Streamed(pair.source_train.images, pair.source_train.path, pair.normalize, device)
    target = batches.Streamed(pair.target_train.images, pair.target_train.path, pair.normalize, device)
    memory = batches.InMemory(pair.source_train.images.clone(), pair.normalize, device)
    memory_target = batches.InMemory(pair.target_train.images.clone(), pair.normalize, device)
    generator = torch.Generator().manual_seed(3)
    plan = [(torch.randperm(48, generator=generator)[:8], torch.randperm(48, generator=generator)[:8])
            for _ in range(5)]
    plan.insert(2, None)  # a skipped step stays in its place
    global_state = torch.get_rng_state()
    got = list(batches.step_batches(streamed, target, iter(plan), 0))
    # torch's global generator untouched (dropout masks stay the in-memory run's)
    assert torch.equal(torch.get_rng_state(), global_state)
    want = list(batches.step_batches(memory, memory_target, iter(plan), 0))
    assert [g is None for g in got] == [w is None for w in want] == [p is None for p in plan]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            assert torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]) and torch.equal(g[2], w[2])


def _daemon_run(root: str, queue) -> None:
    os.environ["TRANSFERKIT_MEMORY_BUDGET"] = "0"
    torch.set_num_threads(1)
    adapter = DomainAdapter(method="dann", epochs=1, steps_per_epoch=2, batch_size=8, device="cpu",
                            data_root=root, progress=False).fit("mnist", "mnist_m")
    queue.put((batches.stream_workers(), adapter.pair_.streamed,
               {k: v.numpy().copy() for k, v in adapter.model_.state_dict().items()}))  # by value


def test_a_daemonic_process_reads_in_its_main_process(digit_root, monkeypatch):
    """A worker of the benchmark's --jobs pool is daemonic and may not start DataLoader
    workers: it reads the rows itself, to the same weights."""
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    assert batches.stream_workers() == batches.STREAM_WORKERS
    # forked (no second import of torch; the --jobs pool spawns, but a daemonic process may not
    # start processes whichever way it was started)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_daemon_run, args=(str(digit_root), queue), daemon=True)
    process.start()
    deadline = time.monotonic() + 900  # generous: a busy machine starts a spawned torch slowly
    while True:
        try:
            workers, was_streamed, weights = queue.get(timeout=5)
            break
        except queue_module.Empty:
            assert process.is_alive(), f"the daemonic process died (exit code {process.exitcode})"
            assert time.monotonic() < deadline, "the daemonic process gave no result in 900 s"
    process.join(timeout=600)  # it has answered; a busy machine may take a while to end it
    assert process.exitcode == 0 and workers == 0 and was_streamed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the daemon
    try:
        here = DomainAdapter(method="dann", epochs=1, steps_per_epoch=2, batch_size=8, device="cpu",
                             data_root=digit_root, progress=False).fit("mnist", "mnist_m")
    finally:
        torch.set_num_threads(threads)
    mine = here.model_.state_dict()
    assert all(np.array_equal(mine[k].numpy(), weights[k]) for k in mine)
    assert np.isfinite(sum(float(v.float().sum()) for v in mine.values()))


@pytest.mark.parametrize("prefix_cached", [True, False])
def test_a_backbone_run_streams_too(digit_root, tmp_path, monkeypatch, prefix_cached):
    """A pretrained-backbone run whose frozen prefix is computed once (from the streamed file,
    a slice at a time) or runs at every step: the same weights as in memory."""
    from transferkit import api

    if not prefix_cached:
        monkeypatch.setattr(api, "PREFIX_CACHE_BYTES", 0)
    settings = {"method": "dann", "backbone": "resnet18", "weights": "random", "unfreeze": 1,
                "image_size": 32, "epochs": 1, "steps_per_epoch": 3, "batch_size": 8, "device": "cpu",
                "data_root": digit_root, "progress": False}
    monkeypatch.delenv("TRANSFERKIT_MEMORY_BUDGET", raising=False)
    in_memory = DomainAdapter(**settings, run_dir=tmp_path / "memory").fit("mnist", "mnist_m")
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    streamed = DomainAdapter(**settings, run_dir=tmp_path / "streamed").fit("mnist", "mnist_m")
    assert streamed.pair_.streamed
    expected = "frozen prefix (layer3) cached" if prefix_cached else "streamed"
    assert streamed.results_["inputs"] == expected
    mine, theirs = in_memory.model_.state_dict(), streamed.model_.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert in_memory.results_["target_test_accuracy"] == streamed.results_["target_test_accuracy"]


# ---------------------------------------------------------------- recipes: photos larger than memory


@pytest.mark.parametrize("views", [2, 0], ids=["cached-prefix", "online"])
def test_a_finetune_over_the_memory_budget_reads_its_images_from_disk_to_the_same_model(
        tmp_path, monkeypatch, capsys, views):
    """A folder of photos whose resized images do not fit trains from a memory-mapped file of
    them (and, with cached views, memory-mapped frozen-stage outputs) to the very weights the
    in-memory run reaches."""
    from fakes import write_two_class_data
    from safetensors.torch import load_file, save_file

    from transferkit.models.backbones import build_backbone
    from transferkit.recipes import RecipeConfig, run

    photos = write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 8})
    source = build_backbone("small_convnet", "random")
    weights = tmp_path / "w.safetensors"  # weights from a file: the prefix outputs are cached
    save_file({k.replace("stages.", "", 1): v.contiguous() for k, v in source.state_dict().items()},
              str(weights))
    config = RecipeConfig(recipe="finetune", data=f"folder:{photos}", backbone="small_convnet",
                          weights=str(weights), image_size=48, views=views, unfreeze="1",
                          epochs=2, finetune_epochs=1, batch_size=8, device="cpu")
    monkeypatch.delenv("TRANSFERKIT_MEMORY_BUDGET", raising=False)
    in_memory = run(config, tmp_path / "memory", progress=False)
    assert "streaming" not in capsys.readouterr().err
    prepared = cache_dir() / "prepared"
    assert not prepared.exists()

    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "1000")  # 32 images of 3×55×55 take 290 kB
    seen = []  # the recipes read their batches in the training process, from the mapped file
    from transferkit.training import batches as batches_module
    batch = batches_module.OnlineInputs.batch if views == 0 else batches_module.CachedInputs.batch

    def spy(self, index, epoch=0):
        held = self.images if views == 0 else self.views[epoch % len(self.views)]
        seen.append(_file_backed(held))
        return batch(self, index, epoch)

    monkeypatch.setattr(batches_module.OnlineInputs if views == 0 else batches_module.CachedInputs,
                        "batch", spy)
    streamed = run(config, tmp_path / "streamed", progress=False)
    err = capsys.readouterr().err
    assert "streaming folder:" in err and "over the memory budget" in err and "prepared" in err
    assert len(list(prepared.glob("*.npy"))) == 3  # train, val, test resized once, to a file
    assert seen and all(seen), "a training batch was read from a tensor in memory"
    assert streamed["test_accuracy"] == in_memory["test_accuracy"]
    mine = load_file(str(tmp_path / "memory" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "streamed" / "model.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _file_backed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of a file (``/proc/self/maps``)."""
    address = tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return len(fields) >= 6 and fields[5].endswith(".npy")
    return False
