"""torchrun: two processes (gloo, CPU) train the run one process trains with their global batch,
and a run whose rank dies resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import write_digit_pair
from safetensors.torch import load_file

from transferkit.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def adapt(out, root, batch, *extra):
    return ["adapt", "--method", "dann", "--source", "mnist", "--target", "mnist_m", "--epochs", "2",
            "--steps-per-epoch", "3", "--batch-size", str(batch), "--device", "cpu", "--quiet",
            "--data-root", str(root), "--out", str(out), *extra]


def torchrun(args, nodes_args=("--standalone",), processes=2, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *nodes_args, "--nproc_per_node",
               str(processes), "-m", "transferkit", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_digit_pair(tmp_path_factory.mktemp("data"), n_train=64, n_test=16)


@pytest.fixture(scope="module")
def single(root, tmp_path_factory):
    """One process, global batch 16."""
    out = tmp_path_factory.mktemp("runs") / "single"
    torch.set_num_threads(1)
    try:
        assert main(adapt(out, root, 16)) == 0
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    return out


def same_model(a, b, tolerance=1e-5):
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys()
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    assert worst <= tolerance, worst
    return worst


def test_two_processes_of_batch_8_train_what_one_process_of_batch_16_trains(root, single, tmp_path):
    out = tmp_path / "two"
    done = torchrun(adapt(out, root, 8))
    assert done.returncode == 0, done.stderr[-2000:]
    # gradients averaged over two halves instead of summed over one batch: rounding apart only
    same_model(single, out)
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, out))
    assert two["target_test_accuracy"] == pytest.approx(one["target_test_accuracy"], abs=1 / 16)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written once, by rank 0
    assert done.stdout.count("target-test accuracy") == 1  # reported once, by rank 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in single.iterdir() if not p.name.startswith("."))


def test_two_nodes_over_localhost_rendezvous(root, single, tmp_path):
    out = tmp_path / "nodes"
    port = 29400 + os.getpid() % 500
    common = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
              "--rdzv-id", f"test{os.getpid()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *common, "--node-rank", str(i),
                               "--nproc_per_node", "1", "-m", "transferkit", *adapt(out, root, 8)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=120)
        assert node.returncode == 0, err[-2000:]
    same_model(single, out)


def test_a_run_whose_rank_dies_resumes_from_its_checkpoint(root, single, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = Path(__file__).with_name("torchrun_die.py")  # rank 1 dies at the start of epoch 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), *adapt(out, root, 8)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1]
    assert not (out / "model.safetensors").exists()
    assert main(adapt(out, root, 8)) == 2  # one process cannot resume what two trained
    done = torchrun(adapt(out, root, 8))  # the same command again
    assert done.returncode == 0, done.stderr[-2000:]
    same_model(single, out)
