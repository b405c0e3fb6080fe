#!/usr/bin/env bash
# Create (or reuse) the two virtual environments the project needs:
#   .venv        the toolkit: LSST middleware, rucio-clients, Jupyter, papermill, tests
#   .venv-rucio  the Rucio server (its pins clash with the toolkit's, so it lives apart)
# Idempotent: a venv whose stamp matches its requirements file is reused as is.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

find_python312() {
  local cand
  for cand in "${MSNB_PYTHON:-}" python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" \
              $(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) \
              /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -n "$cand" ] || continue
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      command -v "$cand" 2>/dev/null || echo "$cand"; return 0
    fi
  done
  # pyenv installs that are not on PATH by default
  if command -v pyenv >/dev/null 2>&1; then
    local v; v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12' | tail -n1 || true)
    if [ -n "$v" ]; then echo "$(pyenv root)/versions/$v/bin/python3.12"; return 0; fi
  fi
  return 1
}

PY=$(find_python312) || {
  echo "multisite_nb needs Python 3.12 (the line Rubin's middleware is on)." >&2
  echo "Install it, e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv'," >&2
  echo "or point MSNB_PYTHON at a 3.12 interpreter." >&2
  exit 1
}

make_venv() {  # $1 venv dir, $2 requirements file, $3 extra pip args
  local venv=$1 req=$2 stamp="$1/.msnb-stamp"
  local want; want=$(sha256sum "$req" | cut -c1-16)
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setting up $venv from $req (first use; later runs reuse it)" >&2
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$req" ${3:-} >&2
  echo "$want" > "$stamp"
}

make_venv .venv-rucio requirements/rucio-server.txt
make_venv .venv requirements/toolkit.txt
# the toolkit itself, editable, so that tests and notebooks see the working tree
if ! .venv/bin/python -c 'import multisite_nb' >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --no-deps -e . >&2
fi
