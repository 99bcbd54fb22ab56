"""The training path on a CUDA device: skipped where there is none (CI has none).

Run on a GPU machine with ``python -m pytest tests/test_cuda.py``. The CPU path is the
reference: the same seed on both devices computes the same function (up to TF32 and kernel
order), and a model trained on the GPU loads and predicts on a CPU-only machine.
"""

from __future__ import annotations

import json

import pytest
import torch
from fakes import write_digit_pair

from transferkit import DomainAdapter
from transferkit.models import gradient_reversal
from transferkit.training.loop import run_batches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def digit_root(tmp_path):
    return write_digit_pair(tmp_path / "data")


def test_gradient_reversal_on_cuda_is_minus_lambda_times_the_gradient():
    x = torch.randn(16, 8, device="cuda", requires_grad=True)
    incoming = torch.randn(16, 8, device="cuda")
    gradient_reversal(x, 0.37).backward(incoming)
    assert torch.equal(x.grad, -0.37 * incoming)


def _fit(device: str, run_dir, digit_root, **extra) -> DomainAdapter:
    return DomainAdapter(method="dann", epochs=2, steps_per_epoch=4, device=device, seed=3,
                         run_dir=run_dir, data_root=digit_root, progress=False,
                         **extra).fit("mnist", "mnist_m")


def test_cuda_training_matches_the_cpu_run_of_the_same_seed(digit_root, tmp_path):
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    try:
        on_gpu = _fit("cuda", tmp_path / "gpu", digit_root, ema_decay=0.9)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    on_cpu = _fit("cpu", tmp_path / "cpu", digit_root, ema_decay=0.9)
    gpu_lines, cpu_lines = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl")
                             .read_text().splitlines()] for name in ("gpu", "cpu"))
    for gpu, cpu in zip(gpu_lines, cpu_lines, strict=True):
        for key in ("loss", "class_loss", "domain_loss"):
            assert gpu[key] == pytest.approx(cpu[key], rel=1e-4), key
    gpu_weights = {k: v.cpu() for k, v in on_gpu.model_.state_dict().items()}
    for name, value in on_cpu.model_.state_dict().items():
        assert torch.allclose(gpu_weights[name], value, atol=1e-5), name
    results = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert results["device"].startswith("cuda") and results["peak_memory_mb"] > 0


def test_a_model_trained_on_cuda_loads_and_predicts_on_the_cpu(digit_root, tmp_path):
    on_gpu = _fit("cuda", tmp_path / "run", digit_root)
    images = on_gpu.pair_.target_test.images
    gpu_logits = run_batches(on_gpu.model_, images, on_gpu.pair_)
    assert next(on_gpu.model_.parameters()).is_cuda
    reopened = DomainAdapter.load(tmp_path / "run", data_root=digit_root, device="cpu",
                                  progress=False)
    cpu_logits = run_batches(reopened.model_, images, reopened.pair_)
    assert torch.allclose(gpu_logits, cpu_logits, atol=1e-3)
    # Logits within 1e-3 of each other can swap the top two classes only where these are
    # closer than 2e-3: the classes must agree everywhere else, not by rounding luck on a
    # near-tie. Measured on the CPU for this seed: the smallest top-two gap is 0.0084.
    top = cpu_logits.topk(2, dim=1).values
    clear = top[:, 0] - top[:, 1] > 2e-3
    assert float(clear.float().mean()) >= 0.9  # the check covers (nearly) every image
    assert torch.equal(reopened.predict(images)[clear], gpu_logits.argmax(1)[clear])


def test_vadas_exact_adversarial_direction_on_cuda_is_the_cpus():
    """The forward-mode product of VADA's power iteration, on the GPU against the CPU (TF32
    off: the direction is compared, not the kernels' rounding)."""
    from transferkit.methods.vada import adversarial_direction
    from transferkit.models import DigitNetwork

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28).eval()
    images, start = torch.rand(16, 3, 28, 28) - 0.5, torch.randn(16, 3, 28, 28)
    cpu = adversarial_direction(network, images, network(images), None, start)
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gpu_net, gpu_images = network.cuda(), images.cuda()
        gpu = adversarial_direction(gpu_net, gpu_images, gpu_net(gpu_images), None, start.cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    cosine = (gpu.cpu().double() * cpu.double()).flatten(1).sum(1)
    assert float(cosine.min()) > 0.999


def test_a_streamed_pair_trains_on_cuda_as_in_memory(digit_root, tmp_path, monkeypatch):
    """Rows read by DataLoader workers into pinned memory, then copied to the GPU: the same
    batches as in memory (GPU kernels may sum in another order from run to run, hence the
    tolerance rather than equality)."""
    monkeypatch.delenv("TRANSFERKIT_MEMORY_BUDGET", raising=False)
    in_memory = _fit("cuda", tmp_path / "memory", digit_root)
    monkeypatch.setenv("TRANSFERKIT_MEMORY_BUDGET", "0")
    streamed = _fit("cuda", tmp_path / "streamed", digit_root)
    assert streamed.pair_.streamed and not in_memory.pair_.streamed
    assert json.loads((tmp_path / "streamed" / "metrics.json").read_text())["inputs"] == "streamed"
    mine, theirs = in_memory.model_.state_dict(), streamed.model_.state_dict()
    assert max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine) < 1e-4
