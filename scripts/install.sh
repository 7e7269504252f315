#!/usr/bin/env bash
# Installs the program into the virtual environment VENV (created when missing), as the Makefile asks:
#   scripts/install.sh VENV GPU [dev]
# GPU=1: pip resolves the project against constraints.txt (the complete lock): torch's CUDA build with
#        every nvidia-*, cuda-* and triton package its metadata asks for, as on any machine.
# GPU=0: the lock's program section (and dev section), installed with --no-deps, so the gpu section
#        (triton, cuSOLVER, cuda-toolkit...) stays out: pip's resolver would pull it back in, as torch's
#        metadata asks for it. The nvidia libraries that torch's own libraries link stay (scripts/lock.py
#        says which and why): `import torch` needs them, GPU or not. torch then runs on its CPU paths.
# dev:   also the dev extra (tests, lint), for `make test`.
# Then scripts/check_install.py checks that what the program imports is there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1 gpu=$2 extra=${3:-}
test -x "$venv/bin/python" || "${PY:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip)

if [ "$gpu" = 1 ]; then
  "${pip[@]}" install -c constraints.txt -e ".${extra:+[$extra]}"
else
  lock=$(mktemp)
  trap 'rm -f "$lock"' EXIT
  "$venv/bin/python" scripts/check_install.py --lock-lines program $extra > "$lock"
  "${pip[@]}" install --no-deps -r "$lock"
  # a venv installed with GPU=1 before: take the gpu section out again
  gpu_only=$("$venv/bin/python" scripts/check_install.py --lock-lines gpu | cut -d= -f1)
  installed=$("${pip[@]}" list --format=freeze | cut -d= -f1 | tr 'A-Z_.' 'a-z--')
  remove=$(comm -12 <(echo "$gpu_only" | sort) <(echo "$installed" | sort))
  [ -z "$remove" ] || "${pip[@]}" uninstall -y $remove
  "${pip[@]}" install --no-deps -e .
fi
"$venv/bin/python" scripts/check_install.py --gpu "$gpu" ${extra:+--extra "$extra"}
