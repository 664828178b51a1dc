#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (torch pinned to the local CPU build),
# then runs what you ask.
#   bash run.sh demo        the main job: shipped CNN + embedded Fashion-MNIST sample
#   bash run.sh test        the whole test suite
#   bash run.sh <args...>   any `minnorm` command, e.g. bash run.sh attack --help
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
stamp="$VENV/.minnorm-setup-$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  # The pin must come first: any other torch spec pulls a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[dev]"
  rm -f "$VENV"/.minnorm-setup-*
  touch "$stamp"
fi
case "${1:-demo}" in
  test) shift
    # Best effort, as root with apt: Chromium renders the HTML report in its test, and Debian's
    # Fashion-MNIST lets the reader tests check the real files (both skip without them).
    need=()
    command -v chromium >/dev/null || need+=(chromium)
    [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
    if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get install -y -q "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need[@]}" >/dev/null 2>&1; } || true
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) exec "$VENV/bin/minnorm" "$@" ;;
esac
