#!/usr/bin/env bash
# The GPU suite in one command on an offline GPU box (Python 3.12 + PyTorch, no Ray, no internet), as
# BENCHMARKS.md describes: `make devicepack` here, `.devicepack` carried, then on the box
#   bash bench/device-run.sh [SECONDS]
# It unpacks Ray (.devicepack/site.tar.xz) and, where the box's own fail to import, the transformers
# stack this repository is tested with (.devicepack/whl), then runs within SECONDS (default 480):
#   1. pytest -m gpu                        (the CUDA-only tests)
#   2. python -m bench --device cuda --no-e2e   (model only: BLIP @64/256/512 and @512+stock, CLIP; MODEL_ONLY=0 skips)
#   3. python -m bench --device cuda --no-model-only --e2e $E2E   (the real jobs end to end)
# Each step gets what is left of the budget; every figure is in the JSON as soon as it is measured.
# Results go to $OUT (the device tool's folder) or bench-out/.
set -u
budget=${1:-480}
start=$(date +%s)
out=${OUT:-bench-out}
mkdir -p "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }
e2e=${E2E:-blip-base,clip-b32,clip-l14,clean,smolvlm,florence2}
e2e_scale=${E2E_SCALE:-0.4}

mkdir -p /tmp/site && tar -xJf .devicepack/site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/.devicepack/py:$PWD
if ls .devicepack/whl/*.whl >/dev/null 2>&1 \
   && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tf .devicepack/whl/*.whl \
   && PYTHONPATH=/tmp/tf:$PYTHONPATH python3 -c "import transformers, tokenizers, huggingface_hub"; then
  export PYTHONPATH=/tmp/tf:$PYTHONPATH
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CAPFILT_CACHE=/tmp/capfilt-cache RAY_USAGE_STATS_ENABLED=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv
  python3 -c "import sys, torch, transformers, ray; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, 'ray', ray.__version__)"
  nproc; free -g | head -2
} 2>&1 | tee "$out/environment.txt"

echo "== pytest -m gpu ($(left) s left)"
timeout $(( $(left) < 120 ? $(left) : 120 )) python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu 2>&1 \
  | tee "$out/pytest-gpu.log" | tail -15

echo "== model only ($(left) s left)"
[ "${MODEL_ONLY:-1}" = 0 ] || timeout $(( $(left) < 170 ? $(left) : 170 )) python3 -m bench --device cuda --no-e2e --seconds "${SECONDS_PER_FIGURE:-3}" \
  --out "$out/bench-gpu-model.json" 2>&1 | tee "$out/bench-model.log" | grep -v "^\s*$" | grep "^|" 

echo "== end to end: $e2e × $e2e_scale ($(left) s left)"
timeout $(( $(left) - 5 )) python3 -m bench --device cuda --no-model-only --e2e "$e2e" --e2e-scale "$e2e_scale" \
  --out "$out/bench-gpu-e2e.json" 2>&1 | tee "$out/bench-e2e.log" | grep "^|\|Error\|error" | grep -v Loading
echo "== done in $(( $(date +%s) - start )) s"
