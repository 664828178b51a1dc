#!/usr/bin/env bash
# Install the peer libraries the benchmarks compare against (adv_lib, Foolbox 3, torchattacks)
# without letting pip touch torch.
#
# All three declare torchvision (and adv-lib also visdom); resolving those pulls a multi-GB torch
# build and visdom does not build here. So the three peers go in with --no-deps, their real
# runtime needs go in normally, and benchmarks/stubs/ stands in for torchvision/visdom at import
# time (put on sys.path by benchmarks/peers.py only). A constraint file pins torch to the
# installed version as a second guard; the script fails if torch changed anyway.
set -euo pipefail
PY=${PYTHON:-python}

torch_before=$("$PY" -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_before}" > "$constraints"

# Runtime dependencies that are safe to resolve (none of them depends on torch).
"$PY" -m pip install -c "$constraints" eagerpy gitpython requests scipy typing-extensions tqdm
# The peers themselves, with nothing they declare.
"$PY" -m pip install --no-deps -c "$constraints" adv-lib foolbox torchattacks

torch_after=$("$PY" -c "import torch; print(torch.__version__)")
if [ "$torch_before" != "$torch_after" ]; then
    echo "install_peers.sh: torch changed from $torch_before to $torch_after" >&2
    exit 1
fi
"$PY" -m pip list 2>/dev/null | grep -iE '^(torch|adv-lib|adv_lib|foolbox|torchattacks|eagerpy) '
