# Sourced by scripts/setup.sh and scripts/lock.sh: sets PY to a Python 3.12 interpreter
# (MSNB_PYTHON, PATH, pyenv, the usual system places) or exits with what to install.
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
