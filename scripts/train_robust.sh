#!/usr/bin/env bash
# Reproduce the shipped adversarially trained Fashion-MNIST CNNs (issue: DDN and adversarial
# training). Each is the SmallCNN of `cnn`, trained from scratch with `minnorm train` and an
# adversary, exported to src/minnorm/models/weights/NAME.safetensors + NAME.json (the JSON records
# the exact command, time, clean and robust accuracy).
#
#   bash scripts/train_robust.sh [cnn-ddn|cnn-pgd-l2|cnn-pgd-linf|all]     (default: all)
#
# The budget is cut to what a 2-core CPU box trains in well under an hour per model: 4 epochs and
# 7 PGD steps (Madry et al. use 40) or 10 DDN steps (Rony et al. use 100). See docs/models.md.
# Needs the Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist, or MINNORM_DATA).
# Checkpoints go to out/robust/NAME; an interrupted run resumes from its last finished epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
THREADS=${THREADS:-1}
WEIGHTS=src/minnorm/models/weights
which=${1:-all}
common=(--model cnn --activation relu --data fashion-mnist --epochs 4 --lr 0.002 --batch-size 128
        --optimizer adam --schedule onecycle --seed 0 --threads "$THREADS" --device cpu --robust-samples 500)

train() {  # name, then adversary arguments
  local name=$1; shift
  "$PYTHON" -m minnorm train "${common[@]}" --out "out/robust/$name" --export "$WEIGHTS/$name.safetensors" "$@"
}

if [[ $which == cnn-ddn || $which == all ]]; then
  train cnn-ddn --adversary ddn --max-norm 1.0 --steps 10
fi
if [[ $which == cnn-pgd-l2 || $which == all ]]; then
  train cnn-pgd-l2 --adversary pgd-l2 --max-norm 1.0 --steps 7 --attack-arg step_size=0.25
fi
if [[ $which == cnn-pgd-linf || $which == all ]]; then
  train cnn-pgd-linf --adversary pgd-linf --max-norm 0.1 --steps 7 --attack-arg step_size=0.025
fi
