#!/usr/bin/env bash
# Run here, before the two device calls: MNIST and MNIST-M split into two halves that each fit
# the 64 MiB a call may carry (.gpu1 for check.sh, .gpu2 for ganin2016.sh; both git-ignored
# through .git/info/exclude).
set -e
DATA=${1:-../shared/data}
grep -qx '/.gpu1/' .git/info/exclude || printf '/.gpu1/\n/.gpu2/\n/.gpudata/\n' >> .git/info/exclude
rm -rf .gpu1 .gpu2 && mkdir -p .gpu1/mnist .gpu2
cp "$DATA"/mnist/* .gpu1/mnist/
head -c 52000000 "$DATA/mnist_m/train.zip" > .gpu1/train.zip.a
tail -c +52000001 "$DATA/mnist_m/train.zip" > .gpu2/train.zip.b
cp "$DATA/mnist_m/test.zip" "$DATA/SHA256SUMS" .gpu2/
du -sh .gpu1 .gpu2
