#!/usr/bin/env bash
# Smooth (SiLU) Fashion-MNIST models for the second-order Trust Region experiments
# (docs/trust-region.md, the paper's Table 5): `mlp-silu` (784-256-256-10) and `cnn-silu`
# (the SmallCNN of `cnn`), trained briefly with `minnorm train --activation silu` and exported to
# src/minnorm/models/weights/NAME.safetensors + NAME.json (the JSON records the exact command).
#
#   bash scripts/train_silu.sh [mlp-silu|cnn-silu|all]      (default: all)
#
# Kept cheap on purpose (2 epochs each, a few minutes on one CPU thread): the experiment needs a
# smooth network of reasonable accuracy, not the best one. Needs the Fashion-MNIST IDX files
# (apt-get install -y dataset-fashion-mnist, or MINNORM_DATA). THREADS and PYTHON as in
# scripts/train_shipped.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
THREADS=${THREADS:-1}
WEIGHTS=src/minnorm/models/weights
which=${1:-all}

train() {  # name, then `minnorm train` arguments
  local name=$1; shift
  "$PYTHON" -m minnorm train --activation silu --data fashion-mnist --epochs 2 --batch-size 128 --optimizer adam \
    --schedule onecycle --seed 0 --threads "$THREADS" --device cpu --robust-samples 0 --no-progress \
    --out "out/silu/$name" --export "$WEIGHTS/$name.safetensors" "$@"
}

if [[ $which == mlp-silu || $which == all ]]; then
  train mlp-silu --model mlp --lr 0.001
fi
if [[ $which == cnn-silu || $which == all ]]; then
  train cnn-silu --model cnn --lr 0.002
fi
