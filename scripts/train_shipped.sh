#!/usr/bin/env bash
# Reproduce the shipped Fashion-MNIST weights: standard training of the reference CNN and MLP
# with `minnorm train`, exported to src/minnorm/models/weights/{cnn,mlp}.safetensors + .json
# (the JSON records the exact command, epochs, seconds and clean accuracy on the 10k test set).
#
#   bash scripts/train_shipped.sh [cnn|mlp|all]      (default: all)
#
# Needs the Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist, or MINNORM_DATA).
# Checkpoints go to out/shipped/NAME; an interrupted run resumes from its last finished epoch.
# THREADS (default 1) sets torch's CPU threads; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
THREADS=${THREADS:-1}
WEIGHTS=src/minnorm/models/weights
which=${1:-all}

train() {  # name, then `minnorm train` arguments
  local name=$1; shift
  "$PYTHON" -m minnorm train --data fashion-mnist --seed 0 --threads "$THREADS" --device cpu \
    --out "out/shipped/$name" --export "$WEIGHTS/$name.safetensors" "$@"
}

if [[ $which == cnn || $which == all ]]; then
  train cnn --model cnn --activation relu --epochs 10 --lr 0.002 --batch-size 128 --optimizer adam --schedule onecycle
fi
if [[ $which == mlp || $which == all ]]; then
  train mlp --model mlp --activation relu --epochs 10 --lr 0.001 --batch-size 128 --optimizer adam --schedule onecycle
fi
