#!/usr/bin/env bash
# Regenerate the sections of benchmarks/RESULTS.md on the shipped CNN (about 20 minutes on one
# core). Appends; delete or trim RESULTS.md first to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
C="python benchmarks/compare.py --model cnn --n 200 --markdown"
$C --attack deepfool-l2 --repeats 3
$C --attack deepfool-linf --repeats 3
$C --attack cw-l2 --repeats 1
$C --attack cw-l2 --repeats 1 --budget abort_early=False
$C --attack ddn --repeats 3
$C --attack tr-l2 --repeats 3
$C --attack tr-linf --repeats 3
$C --attack pgd-linf --repeats 3 --budget eps=0.02,step_size=0.002
$C --attack pgd-l2 --repeats 3 --budget eps=0.3,step_size=0.03
python benchmarks/passes.py --model cnn --n 100 --markdown
