"""Run folders, training and faults under hostile input (issue 20, part 2: 1, 2, 4, 5, 8).

Each case goes through the command line where a user meets it: the exit code, one line on
stderr and no traceback, and what is left in the run folder (nothing lost, nothing half
written, no config of one run beside the model of another).
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import interrupt_after_first_checkpoint, write_digit_pair, write_two_class_data
from safetensors.torch import save_file

from transferkit import DomainAdapter
from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.methods.source_only import SourceOnly
from transferkit.recipes import RecipeConfig
from transferkit.training import loop, runfolder
from transferkit.training.loop import TrainConfig

BIN = Path(sys.executable).parent


@pytest.fixture
def digit_root(tmp_path):
    return write_digit_pair(tmp_path / "data")


@pytest.fixture
def photos(tmp_path):
    return write_two_class_data(tmp_path / "photos", {"train": 16, "val": 8, "test": 8})


def one_line(capsys) -> str:
    """The one line the CLI printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("transferkit: error: "), err
    return lines[0]


def adapt_args(out: Path, root: Path, *extra: str, epochs: int = 2, steps: int = 2) -> list[str]:
    return ["adapt", "--method", "source_only", "--source", "mnist", "--target", "mnist_m",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--device", "cpu", "--quiet",
            "--out", str(out), "--data-root", str(root), *extra]


def scratch_args(out: Path, photos: Path, *extra: str) -> list[str]:
    return ["scratch", "--data", f"folder:{photos}", "--image-size", "48", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def part_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def adapter(out: Path, root: Path, **changes) -> DomainAdapter:
    settings = dict(method="source_only", epochs=2, steps_per_epoch=2, device="cpu", run_dir=out,
                    data_root=root, progress=False)
    return DomainAdapter(**{**settings, **changes})


def interrupted_after_first_epoch(out: Path, root: Path, monkeypatch, **changes) -> None:
    """A 2-epoch run stopped (Ctrl-C) just after epoch 1's checkpoint."""
    interrupt_after_first_checkpoint(
        monkeypatch, lambda: adapter(out, root, **changes).fit("mnist", "mnist_m"))


# ---------------------------------------------------------------- 1. memory bounded by the data


def test_a_batch_far_beyond_the_data_trains_in_bounded_memory(photos, tmp_path):
    # Before: a 1,000,000-image batch of 24 images was built (9 GB here, 21.9 GB reported).
    # RLIMIT_DATA (heap and anonymous memory, not the libraries' mapped files, which make a
    # CUDA build of torch's address space large) lets the run use 3 GiB; it needs under 1.
    out = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (3 * 2**30, 3 * 2**30))

    done = subprocess.run(
        [str(BIN / "transferkit"), *scratch_args(out, photos, "--batch-size", "1000000")],
        preexec_fn=limit, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["train_size"] == 16


def test_adapt_batches_never_hold_more_than_the_labelled_images(digit_root, tmp_path, monkeypatch, capsys):
    sizes = []
    real = SourceOnly.losses

    def recording(self, images, labels, target_images, progress):
        sizes.append(len(images))
        return real(self, images, labels, target_images, progress)

    monkeypatch.setattr(SourceOnly, "losses", recording)
    out = tmp_path / "run"
    assert main(adapt_args(out, digit_root, "--batch-size", "1000000", epochs=1, steps=2)) == 0
    assert sizes == [96, 96]  # every labelled image once per step, not a million
    assert json.loads((out / "config.json").read_text())["batch_size"] == 1000000  # as asked


@pytest.mark.parametrize(("size", "count"), [(10, 35), (7, 7), (96, 64), (5, 1)])
def test_an_epoch_order_drawn_in_chunks_is_the_whole_order_drawn_at_once(size, count, monkeypatch):
    monkeypatch.setattr(loop, "ORDER_CHUNK", 4)  # many chunks, batches across passes
    whole_generator = torch.Generator().manual_seed(3)
    whole = loop._epoch_indices(size, count, whole_generator)
    generator = torch.Generator().manual_seed(3)
    order = loop._EpochOrder(size, count, generator, torch.device("cpu"))
    taken, left, batches = [], count, itertools.cycle([3, 1, 6])
    while left:
        n = min(next(batches), left)
        taken.append(order.take(n))
        left -= n
    assert torch.equal(torch.cat(taken), whole)
    assert torch.equal(generator.get_state(), whole_generator.get_state())  # resumes alike


# ---------------------------------------------------------------- 2. one writer per run folder


HOLDER = """
import sys
from pathlib import Path
from transferkit.training.runfolder import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_of_one_out_is_refused_and_a_killed_one_leaves_no_lock(
        photos, digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(scratch_args(out, photos)) == 2
        line = one_line(capsys)
        assert f"{out}: another transferkit process (pid {holder.pid}) is writing this run folder" in line
        assert "choose another --out" in line
        assert main(adapt_args(out, digit_root)) == 2
        assert "another transferkit process" in one_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [runfolder.LOCK_FILE]  # nothing written
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    assert main(scratch_args(out, photos)) == 0
    assert (out / "model.safetensors").is_file()


def test_a_finished_recipe_run_is_kept_refused_for_other_settings_and_restarted_on_request(
        photos, tmp_path, capsys, monkeypatch):
    from transferkit import recipes

    out = tmp_path / "run"
    assert main(scratch_args(out, photos)) == 0
    capsys.readouterr()
    saved = {name: (out / name).read_bytes()
             for name in ("config.json", "model.safetensors", "model.json", "metrics.json", "metrics.jsonl")}
    assert main(scratch_args(out, photos, "--lr", "0.01")) == 2
    line = one_line(capsys)
    assert f"{out} holds a run with other settings (learning_rate=0.001 there, 0.01 here)" in line
    assert {name: (out / name).read_bytes() for name in saved} == saved  # config and model unchanged

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(recipes, "fit_stage", refuse)
    assert main(scratch_args(out, photos)) == 0  # the same settings: reported, not trained again
    assert "test accuracy" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in saved} == saved  # wall_seconds kept too
    monkeypatch.undo()
    before = (out / "metrics.json").stat().st_mtime_ns
    assert main(scratch_args(out, photos, "--restart")) == 0  # trained again from the start
    assert (out / "metrics.json").stat().st_mtime_ns != before and (out / "model.safetensors").is_file()
    assert (out / "config.json").read_bytes() == saved["config.json"]


# ---------------------------------------------------------------- 3. non-finite values


def test_non_finite_or_negative_learning_rates_are_refused_by_the_library(tmp_path):
    for rate in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(TransferkitError, match="--lr"):
            DomainAdapter(method="dann", learning_rate=rate, run_dir=tmp_path / "never")
        with pytest.raises(ValueError, match="finite number above 0"):
            TrainConfig(learning_rate=rate)
        with pytest.raises(TransferkitError, match="finite number above 0"):
            RecipeConfig(learning_rate=rate).check()
        with pytest.raises(TransferkitError, match="--finetune-lr"):
            RecipeConfig(finetune_learning_rate=rate).check()
    for flags in ({"batch_size": 0}, {"steps_per_epoch": 0}, {"epochs": 0}):
        with pytest.raises(TransferkitError):
            TrainConfig(**flags)
    assert not (tmp_path / "never").exists()


def test_a_diverging_run_stops_naming_the_epoch_and_loss_and_keeps_the_last_good_checkpoint(
        digit_root, tmp_path, monkeypatch, capsys):
    calls = []
    real = SourceOnly.losses

    def nan_from_epoch_two(self, images, labels, target_images, progress):
        values = real(self, images, labels, target_images, progress)
        calls.append(1)
        if len(calls) > 2:  # steps 3 and 4: epoch 2
            values = {k: v * math.nan for k, v in values.items()}
        return values

    monkeypatch.setattr(SourceOnly, "losses", nan_from_epoch_two)
    out = tmp_path / "run"
    assert main(adapt_args(out, digit_root)) == 2
    line = one_line(capsys)
    assert ("training stopped: the loss terms loss, class_loss became nan in epoch 2 (steps 3-4 of 4) "
            f"of source_only at --lr 0.01; {out / 'checkpoint.pt'} keeps epoch 1") in line
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    monkeypatch.undo()  # and a learning rate that makes the weights blow up
    assert main(adapt_args(tmp_path / "huge", digit_root, "--lr", "1e30")) == 2
    line = one_line(capsys)
    assert "training stopped: the loss terms" in line and "in epoch 1 (steps 1-2 of 4)" in line
    assert "no epoch was saved" in line
    assert not (tmp_path / "huge" / "checkpoint.pt").exists()


def test_weights_that_stop_being_finite_are_caught_before_the_checkpoint(digit_root, tmp_path,
                                                                        monkeypatch):
    real_step = torch.optim.SGD.step

    def poisoned_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(math.inf)  # after the last step's loss
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    out = tmp_path / "run"
    with pytest.raises(TransferkitError, match=r"weight network\.\S+ became NaN or infinite"):
        adapter(out, digit_root, steps_per_epoch=1).fit("mnist", "mnist_m")
    assert not (out / "checkpoint.pt").exists()


def test_a_recipe_whose_loss_is_not_finite_stops_naming_the_epoch_and_loss(photos, tmp_path, monkeypatch,
                                                                           capsys):
    from transferkit import recipes

    monkeypatch.setattr(recipes.F, "cross_entropy", lambda logits, target, **kw: logits.sum() * math.nan)
    out = tmp_path / "run"
    assert main(scratch_args(out, photos)) == 2
    line = one_line(capsys)
    assert ("training stopped: the loss terms loss, train_loss became nan in epoch 1 (steps 1-10 of 10) "
            "of scratch at --lr 0.001; no epoch was saved") in line
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_files_with_nan_tensors_are_refused(suffix, photos, tmp_path, capsys):
    from transferkit.models.backbones import build_backbone

    state = {k.replace("stages.", "", 1): v.clone().contiguous()
             for k, v in build_backbone("small_convnet", "random").state_dict().items()}
    first = next(iter(state))
    state[first][0] = math.nan
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    out = tmp_path / "run"
    assert main(["extract", "--data", f"folder:{photos}", "--backbone", "small_convnet", "--weights",
                 str(path), "--image-size", "48", "--quiet", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert f"--weights {path}: 1 tensor(s) hold NaN or infinite values ({first})" in line
    assert not out.exists()  # refused before anything was written


# ---------------------------------------------------------------- 4. faults: disk full, corrupt files


class FillsUp(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that does not fit writes what fits,
    then fails as a full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "wb")
        self.room = room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            super().write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def fill_disk_at(monkeypatch, name: str, occurrence: int = 1) -> None:
    """The ``occurrence``-th write of run-folder file ``name`` meets a full disk."""
    real = runfolder._open_partial
    seen = []

    def opening(path):
        if runfolder.is_part_file(path, name):  # .NAME.XXXXXXXX.part
            seen.append(path)
            if len(seen) == occurrence:
                return FillsUp(path, 100)
        return real(path)

    monkeypatch.setattr(runfolder, "_open_partial", opening)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(digit_root, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, "checkpoint.pt", occurrence=2)
    assert main(adapt_args(out, digit_root)) == 2
    line = one_line(capsys)
    assert (f"{out / 'checkpoint.pt'}: could not write it (No space left on device); free some space "
            "on that disk, or choose another --out") in line
    assert part_files(out) == []
    assert [h["epoch"] for h in torch.load(out / "checkpoint.pt", weights_only=True)["history"]] == [1]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()  # space freed: the run resumes from epoch 1
    assert main(adapt_args(out, digit_root)) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]


@pytest.mark.parametrize(("name", "occurrence"), [("model.safetensors", 1), ("metrics.json", 1),
                                                  ("metrics.jsonl", 2), ("config.json", 1)])
def test_disk_full_while_writing_an_adapt_run_is_one_line_and_leaves_no_half_file(
        name, occurrence, digit_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, name, occurrence)  # metrics.jsonl: its first write is empty
    assert main(adapt_args(out, digit_root, epochs=1)) == 2
    assert f"{out / name}: could not write it (No space left on device)" in one_line(capsys)
    if name == "config.json":  # the first file of a new folder: nothing is left, not even it
        assert not out.exists()
        return
    assert part_files(out) == []
    assert not (out / "metrics.json").exists()  # never a finished run with a piece missing
    assert json.loads((out / "config.json").read_text())["method"] == "source_only"


@pytest.mark.parametrize(("name", "occurrence"), [("model.safetensors", 1), ("model.json", 1),
                                                  ("metrics.json", 1), ("metrics.jsonl", 2)])
def test_disk_full_while_saving_a_recipe_model_is_one_line(name, occurrence, photos, tmp_path,
                                                          monkeypatch, capsys):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, name, occurrence)
    assert main(scratch_args(out, photos)) == 2
    assert f"{out / name}: could not write it (No space left on device)" in one_line(capsys)
    assert part_files(out) == [] and not (out / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_checkpoint_names_the_file_and_restart_trains_the_run_again(
        damage, digit_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_after_first_epoch(out, digit_root, monkeypatch)
    checkpoint = out / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x80not a checkpoint" * 40,
                            "empty": b""}[damage])
    assert main(adapt_args(out, digit_root)) == 2
    line = one_line(capsys)
    assert f"{checkpoint}: corrupt or truncated checkpoint" in line
    assert "rerun with --restart to discard it" in line
    assert main(adapt_args(out, digit_root, "--restart")) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "metrics.json").is_file()


def test_restart_still_refuses_a_folder_of_other_settings(digit_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_after_first_epoch(out, digit_root, monkeypatch)
    with pytest.raises(TransferkitError, match="learning_rate=0.01 there, 0.1 here"):
        adapter(out, digit_root, learning_rate=0.1, restart=True).fit("mnist", "mnist_m")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["history"][0]["epoch"] == 1


def test_a_corrupt_model_in_predict_is_one_line_naming_it(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(scratch_args(out, photos)) == 0
    capsys.readouterr()
    model = out / "model.safetensors"
    model.write_bytes(model.read_bytes()[:200])
    assert main(["predict", str(out), str(photos / "test")]) == 2
    line = one_line(capsys)
    assert f"{model}: not a readable safetensors file, corrupt or truncated" in line
    assert "train it again" in line


def test_report_of_a_run_with_fewer_test_images_than_the_tsne_perplexity(tmp_path, capsys):
    for test_images, expect in ((8, "perplexity 2.33, lowered from 30"), (3, "No t-SNE figure")):
        photos = write_two_class_data(tmp_path / f"photos{test_images}",
                                      {"train": 16, "val": 4, "test": test_images})
        out = tmp_path / f"run{test_images}"
        assert main(scratch_args(out, photos)) == 0
        assert main(["report", str(out), "--samples", "10"]) == 0, capsys.readouterr().err
        page = (out / "report" / "report.html").read_text()
        assert expect in page
        assert (out / "report" / "tsne.png").is_file() == (test_images == 8)


# ---------------------------------------------------------------- 5. the run's own time


def test_a_resume_or_a_no_op_rerun_keeps_the_runs_training_time(digit_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = SourceOnly.losses

    def slow_first_step(self, images, labels, target_images, progress):
        if progress == 0.0:
            time.sleep(1.5)  # epoch 1 takes 1.5 s more: the time the first invocation spent
        return real(self, images, labels, target_images, progress)

    monkeypatch.setattr(SourceOnly, "losses", slow_first_step)
    interrupted_after_first_epoch(out, digit_root, monkeypatch)
    before = torch.load(out / "checkpoint.pt", weights_only=True)["wall_seconds"]
    assert before >= 1.5
    started = time.perf_counter()
    assert main(adapt_args(out, digit_root)) == 0  # resumes at epoch 2
    resumed_alone = time.perf_counter() - started
    total = json.loads((out / "metrics.json").read_text())["wall_seconds"]
    assert before < total < before + resumed_alone  # both invocations, the first's kept
    assert main(adapt_args(out, digit_root)) == 0  # finished: trains nothing
    assert json.loads((out / "metrics.json").read_text())["wall_seconds"] == total
    assert f"{total:.0f} s on cpu" in capsys.readouterr().out


# ---------------------------------------------------------------- review: the lock, whole files, --out


def test_the_lock_file_stays_and_still_locks_later_runs(photos, tmp_path, capsys):
    # Before: the lock file was removed while held, so a process that had opened it could lock
    # the removed file while a third locked a new one: two writers of one folder.
    out = tmp_path / "run"
    assert main(scratch_args(out, photos)) == 0
    capsys.readouterr()
    lock = out / runfolder.LOCK_FILE
    assert lock.is_file()  # kept by a finished run
    inode = lock.stat().st_ino
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a new run takes the same lock
        assert main(scratch_args(out, photos)) == 2
        assert f"another transferkit process (pid {holder.pid})" in one_line(capsys)
        assert lock.stat().st_ino == inode  # the refused writer left it in place
    finally:
        holder.kill()
        holder.wait()
    assert lock.stat().st_ino == inode
    with runfolder.locked(out):  # and this process takes it: the other one cannot at once
        second = subprocess.run([sys.executable, "-c", HOLDER, str(out)], input="", capture_output=True,
                                text=True, timeout=300)
        assert second.returncode != 0 and "held" not in second.stdout
        assert "another transferkit process" in second.stderr
        assert lock.stat().st_ino == inode
    assert lock.stat().st_ino == inode


def test_a_lock_file_removed_between_open_and_lock_is_opened_again(tmp_path, monkeypatch):
    # The race itself: this process opens the lock file, another removes it and a third makes
    # and locks a new one before this process locks the one it opened.
    out = tmp_path / "run"
    out.mkdir()
    (out / runfolder.LOCK_FILE).write_text("")
    real_open = runfolder._open_lock
    holders = []

    def open_then_lose_the_race(path):
        descriptor = real_open(path)
        if not holders:
            path.unlink()
            holders.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True))
            assert holders[0].stdout.readline().strip() == "held"
        return descriptor

    monkeypatch.setattr(runfolder, "_open_lock", open_then_lose_the_race)
    try:
        with pytest.raises(TransferkitError, match="another transferkit process") as refused, \
                runfolder.locked(out):
            pass
        assert f"(pid {holders[0].pid})" in str(refused.value)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    with runfolder.locked(out):  # the holder gone: taken
        assert (out / runfolder.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (out / runfolder.LOCK_FILE).is_file()


def test_files_are_replaced_whole_through_a_part_file_of_their_own(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    runfolder.write_json(path, {"epochs": 1})
    assert json.loads(path.read_text()) == {"epochs": 1}
    runfolder.save_tensors(tmp_path / "w.safetensors", {"x": torch.arange(6.0)})
    assert torch.equal(runfolder.read_safetensors(tmp_path / "w.safetensors", "")["x"], torch.arange(6.0))
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() makes it, not mkstemp's 0o600

    # Two writers of one file (before: one PATH.part, the first writer's rename then failed).
    def write_while_another_writes(handle):
        handle.write(b'{"epochs": 2}')
        runfolder.write_json(path, {"epochs": 3})

    runfolder.replace_file(path, write_while_another_writes)
    assert json.loads(path.read_text()) == {"epochs": 2} and part_files(tmp_path) == []

    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append("folder" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file")
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    runfolder.write_json(path, {"epochs": 4})
    assert synced == ["file", "folder"]  # the data, then the rename, on the disk

    def refuse(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(TransferkitError, match=r"config\.json: could not write it \(Input/output error\); "
                                               "check that disk, or choose another --out"):
        runfolder.write_json(path, {"epochs": 5})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"epochs": 4}  # the old file, unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == before and part_files(tmp_path) == []

    # A part file left by a killed writer goes with its file on --restart.
    (tmp_path / ".config.json.k1ll3d.part").write_bytes(b"{")
    (tmp_path / "config.json.part").write_bytes(b"{")  # an older transferkit's
    runfolder.discard(tmp_path, ("config.json",))
    assert not path.exists() and part_files(tmp_path) == []


def test_an_out_that_is_a_file_is_one_line(photos, digit_root, tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    for args in (scratch_args(a_file, photos), adapt_args(a_file, digit_root)):
        assert main(args) == 2
        assert f"--out {a_file} is a file, not a folder: choose a folder for the run" in one_line(capsys)
    assert main(scratch_args(a_file / "run", photos)) == 2
    assert f"--out {a_file / 'run'}: {a_file} is a file, not a folder" in one_line(capsys)
    assert a_file.read_text() == "mine"


def test_an_unreadable_config_says_restart_replaces_it(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(scratch_args(out, photos)) == 0
    capsys.readouterr()
    (out / "config.json").write_text("{not json")
    assert main(scratch_args(out, photos)) == 2
    line = one_line(capsys)
    assert f"{out / 'config.json'}: not readable JSON" in line
    assert "rerun with --restart to replace it, or remove the folder" in line
    assert main(scratch_args(out, photos, "--restart")) == 0
    assert json.loads((out / "config.json").read_text())["recipe"] == "scratch"


def test_a_finished_adapt_run_rerun_is_reported_as_recorded_not_rewritten(digit_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(adapt_args(out, digit_root)) == 0
    recorded = {name: (out / name).read_bytes() for name in ("metrics.json", "model.safetensors")}
    first = capsys.readouterr().out
    assert main(adapt_args(out, digit_root, "--device", "cpu")) == 0  # trains nothing
    assert {name: (out / name).read_bytes() for name in recorded} == recorded
    assert capsys.readouterr().out == first
