#!/usr/bin/env bash
# The GPU check, run by the device tool on a lent machine (15 minutes of device time in all):
#   here:   bash tools/gpu_prepare.sh
#   device: run(command="bash tools/gpu_check.sh", carry=[".whl", ".data"], timeout_s=540)
# Steps, each with its own time limit so the whole fits in 8 minutes, each writing under $OUT:
#   1. the machine (nvidia-smi, torch, CUDA, bf16 support)              -> env.txt
#   2. the CUDA-marked tests (tests/test_cuda.py)                      -> tests.log
#   3. luring bench --device cuda --quick                              -> bench.json, bench.txt
#   4. luring reproduce --dataset fashion-mnist --profile quick --device cuda (as far as it
#      gets in its time; the run directory is resumable)               -> reproduce.log,
#                                                                         results.json, report.md
# Figures go to the README with the card's name (env.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/luring-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LURING_NO_PROGRESS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
{ nvidia-smi; python3 - <<'PY'
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY
} > "$OUT/env.txt" 2>&1
timeout 90 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
  > "$OUT/tests.log" 2>&1; echo "tests exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/tests.log"
timeout 150 python3 -m luring bench --device cuda --quick --out "$OUT/bench.json" \
  > "$OUT/bench.txt" 2>&1; echo "bench exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/bench.txt"
if [ -d .data/FashionMNIST/raw ]; then
  run=/tmp/luring-fmnist
  /usr/bin/time -v timeout 210 python3 -m luring reproduce --dataset fashion-mnist \
    --data-dir .data --profile quick --device cuda --out "$run" > "$OUT/reproduce.log" 2>&1
  echo "reproduce exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/reproduce.log"
  cp "$run/results.json" "$run/report.md" "$OUT/" 2>/dev/null
  ls -R "$run" | head -100 > "$OUT/run-files.txt"
fi
echo "gpu_check done in $(( $(date +%s) - t0 )) s"
