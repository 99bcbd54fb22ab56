#!/usr/bin/env bash
# GPU benchmark, second of two calls on a lent GPU machine (see README.md beside this file):
# MNIST → MNIST-M of the ganin2016 protocol on CUDA — step throughput, then DANN over 3 seeds
# (seed 0 alone for a clean wall time, seeds 1 and 2 side by side), then the other methods.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
D=.gpudata
H=/tmp/transferkit-gpu  # the first half, left there by check.sh
[ -f $H/train.zip.a ] || { echo "$H/train.zip.a missing: the machine is not the one check.sh ran on"; exit 3; }
mkdir -p $D/mnist_m && cp -r $H/mnist $D/ && cat $H/train.zip.a .gpu2/train.zip.b > $D/mnist_m/train.zip \
  && cp .gpu2/test.zip $D/mnist_m/ && cp .gpu2/SHA256SUMS $D/ || exit 4
(cd $D && sha256sum -c --ignore-missing SHA256SUMS) || exit 5
DEV=${DEV:-cuda}  # DEV=cpu EPOCHS=1 STEPS=20 tries the script's flow on a machine without a GPU
# bench SECONDS ARGS...: one benchmark command, stopped (and resumable) after SECONDS
bench() { local limit=$1; shift
  timeout "$limit" python3 -m transferkit benchmark ganin2016 --pairs mnist:mnist_m --device $DEV \
    --out runs/gpu --data-root $D --quiet ${EPOCHS:+--epochs $EPOCHS} "$@" 2>&1 | grep -v "it/s\]\|img/s\]"; }
timeout 120 python3 benchmarks/experiments/step_throughput.py --steps ${STEPS:-1000} --repeats 3 --device $DEV --data-root $D 2>&1 \
  | grep -v "img/s\]" | tee "$OUT/throughput.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "throughput benchmark failed: stopping"; exit 6; }
# what comes back: the run folders without checkpoints, packed after each stage
pack() { tar czf "$OUT/gpu_runs.tgz" --exclude=checkpoint.pt runs/gpu; }
S=$(date +%s)
bench "${DANN_SECONDS:-150}" --methods dann --seeds 1 --jobs 1; pack; echo "dann seed 0: $(( $(date +%s) - S )) s"
bench "${DANN_SECONDS:-150}" --methods dann --seeds 3 --jobs 2; pack; echo "dann seeds 0-2: $(( $(date +%s) - S )) s"
bench "${REST_SECONDS:-120}" --seeds 3 --jobs 3; pack; echo "all methods: $(( $(date +%s) - S )) s"
[ "$DEV" = cpu ] || nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv
ls -la "$OUT"
