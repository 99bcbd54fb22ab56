#!/usr/bin/env bash
# GPU check, first of two calls on a lent GPU machine (see README.md beside this file).
# Runs the CUDA tests and a plain PyTorch DANN step on the GPU; needs no data set.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), torch.backends.cudnn.version())"
nproc
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_adaptation_parts.py 2>&1 | tee "$OUT/pytest.log" | tail -15
python3 - <<'PY' 2>&1 | tee "$OUT/plain_step.txt"
import statistics, sys
sys.path.insert(0, "benchmarks/experiments")
import step_throughput as s
rates = [s.plain_rate(1000, "cuda") for _ in range(3)]
print(f"plain PyTorch DANN step on cuda: median {statistics.median(rates):.0f} images/s "
      f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
PY
# Keep the first half of the data for the second call: the device tool clears the checkout's
# ignored folders between calls, but not /tmp.
mkdir -p /tmp/transferkit-gpu && cp -r .gpu1/. /tmp/transferkit-gpu/ && du -sh /tmp/transferkit-gpu
