#!/usr/bin/env bash
# Reproduce every shipped Fashion-MNIST model with `minnorm train`, exported to
# src/minnorm/models/weights/NAME.safetensors + NAME.json (the JSON records the exact command,
# epochs, seconds, clean and robust accuracy on the 10k test set). See docs/models.md.
#
#   bash scripts/train_shipped.sh [NAME ...|standard|tiny|silu|robust|all]     (default: all)
#
#   standard  cnn, mlp: 10 epochs of standard training
#   tiny      mlp-tiny (784-16-16-10), mlp-tiny32 (784-32-32-10): small enough for exact MILP solves
#             (minnorm certify), 10 epochs
#   silu      mlp-silu, cnn-silu: smooth networks for the second-order trust-region experiments,
#             2 epochs (they need a smooth network of reasonable accuracy, not the best one)
#   robust    cnn-ddn, cnn-pgd-l2, cnn-pgd-linf: adversarial training from scratch, cut to what a
#             2-core CPU box trains in about an hour per model: 4 epochs, 7 PGD steps (Madry et
#             al. use 40) or 10 DDN steps (Rony et al. use 100)
#
# Needs the Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist, or MINNORM_DATA).
# Checkpoints go to out/shipped/NAME; an interrupted run resumes from its last finished epoch.
# THREADS (default 1) sets torch's CPU threads; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
THREADS=${THREADS:-1}
WEIGHTS=src/minnorm/models/weights

train() {  # name, then `minnorm train` arguments
  local name=$1; shift
  "$PYTHON" -m minnorm train --data fashion-mnist --batch-size 128 --optimizer adam --schedule onecycle \
    --seed 0 --threads "$THREADS" --device cpu --out "out/shipped/$name" --export "$WEIGHTS/$name.safetensors" "$@"
}

robust=(--model cnn --activation relu --epochs 4 --lr 0.002 --robust-samples 500)
one() {
  case $1 in
    cnn) train cnn --model cnn --activation relu --epochs 10 --lr 0.002 ;;
    mlp) train mlp --model mlp --activation relu --epochs 10 --lr 0.001 ;;
    mlp-tiny) train mlp-tiny --model mlp --hidden 16,16 --activation relu --epochs 10 --lr 0.002 --robust-samples 0 ;;
    mlp-tiny32) train mlp-tiny32 --model mlp --hidden 32,32 --activation relu --epochs 10 --lr 0.002 --robust-samples 0 ;;
    mlp-silu) train mlp-silu --model mlp --activation silu --epochs 2 --lr 0.001 --robust-samples 0 ;;
    cnn-silu) train cnn-silu --model cnn --activation silu --epochs 2 --lr 0.002 --robust-samples 0 ;;
    cnn-ddn) train cnn-ddn "${robust[@]}" --adversary ddn --max-norm 1.0 --steps 10 ;;
    cnn-pgd-l2) train cnn-pgd-l2 "${robust[@]}" --adversary pgd-l2 --max-norm 1.0 --steps 7 --attack-arg step_size=0.25 ;;
    cnn-pgd-linf) train cnn-pgd-linf "${robust[@]}" --adversary pgd-linf --max-norm 0.1 --steps 7 \
                    --attack-arg step_size=0.025 ;;
    *) echo "train_shipped.sh: unknown model '$1'" >&2; exit 2 ;;
  esac
}

for arg in "${@:-all}"; do
  case $arg in
    standard) names=(cnn mlp) ;;
    tiny) names=(mlp-tiny mlp-tiny32) ;;
    silu) names=(mlp-silu cnn-silu) ;;
    robust) names=(cnn-ddn cnn-pgd-l2 cnn-pgd-linf) ;;
    all) names=(cnn mlp mlp-tiny mlp-tiny32 mlp-silu cnn-silu cnn-ddn cnn-pgd-l2 cnn-pgd-linf) ;;
    *) names=("$arg") ;;
  esac
  for name in "${names[@]}"; do one "$name"; done
done
