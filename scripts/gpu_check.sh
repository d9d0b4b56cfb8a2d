#!/usr/bin/env bash
# The GPU check: run from the repository root on a lent GPU machine (`device` tool), e.g.
#     bash scripts/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log"
# It needs no network and no install: the device image has jax, flax, optax, torch, transformers and peft; the
# package is put on PYTHONPATH from this checkout (models/ is swift_jax.models). See scripts/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
pkg=$(mktemp -d)
cp -r swift_jax "$pkg/swift_jax" && cp -r models "$pkg/swift_jax/models"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
python scripts/gpu_check.py
