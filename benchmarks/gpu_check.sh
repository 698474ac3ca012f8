#!/usr/bin/env bash
# On the GPU machine (`make gpu-check`): install the wheels that `make gpu-wheels` put in .whl/ beside
# the machine's own PyTorch, then run the check (benchmarks/gpu.py), writing gpu-check.json to $OUT
# where the machine gives one, else here.
set -euo pipefail
wheels=${1:-.whl}
site=${A2D_GPU_SITE:-/tmp/a2d-site}
ls "$wheels"/*.whl > /dev/null || { echo "no wheels in $wheels: run 'make gpu-wheels' first, where pip works" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
export PYTHONPATH="$site:$PWD" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m benchmarks.gpu --out "${OUT:-.}/gpu-check.json"
