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
  echo "setting up $venv from $req (first use; later runs reuse it; log: $venv.log)" >&2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  if ! { "$venv/bin/python" -m pip install --upgrade pip &&
         "$venv/bin/python" -m pip install -r "$req" ${3:-}; } >"$venv.log" 2>&1; then
    echo "pip failed for $venv; the last lines of $venv.log:" >&2
    grep -v "is ignored: it is neither" "$venv.log" | tail -n 20 >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

make_venv .venv-rucio requirements/rucio-server.txt
make_venv .venv requirements/toolkit.txt
# the toolkit itself, editable, so that tests and notebooks see the working tree
# (checked from / so that the checkout's own folder on sys.path does not count)
installed=$(cd / && "$here/.venv/bin/python" -c 'import multisite_nb, os; print(os.path.dirname(os.path.dirname(multisite_nb.__file__)))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
  .venv/bin/python -m pip install -q --no-deps -e . >>.venv.log 2>&1
fi

# The browser for the dashboard's end-to-end test comes from Debian (a test tool's own
# browser download cannot work on this network).
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser test (once)" >&2
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } \
      >/tmp/msnb-apt.log 2>&1 || { echo "apt-get install chromium failed; see /tmp/msnb-apt.log" >&2; exit 1; }
  else
    echo "chromium is missing: install it (Debian: apt-get install chromium) for the browser test" >&2
  fi
fi
