#!/usr/bin/env bash
# Create (or reuse) the two virtual environments the project needs:
#   .venv        the toolkit: LSST middleware, rucio-clients, Jupyter, papermill, tests
#   .venv-rucio  the Rucio server (its pins clash with the toolkit's, so it lives apart)
# Each venv installs the hash-pinned lock file of its requirements (requirements/*.lock, refreshed
# by 'make lock'). Idempotent: a venv whose stamp matches its lock file is reused as is.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# shellcheck source=scripts/find_python312.sh
source "$here/scripts/find_python312.sh"

make_venv() {  # $1 venv dir, $2 requirements file (.txt) whose lock file (.lock) it installs
  local venv=$1 req=$2 lock="${2%.txt}.lock" stamp="$1/.msnb-stamp"
  if [ ! -f "$lock" ]; then
    echo "$lock is missing: run 'make lock' (scripts/lock.sh) to resolve $req" >&2
    exit 1
  fi
  # the lock records the hash of the .txt it was resolved from: say so if the .txt moved on
  local txt_hash; txt_hash=$(sha256sum "$req" | cut -c1-16)
  if ! grep -q "^# from $req (sha256 $txt_hash" "$lock"; then
    echo "warning: $req changed since $lock was generated; run 'make lock' to refresh it" >&2
  fi
  local want; want=$(sha256sum "$lock" | cut -c1-16)
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setting up $venv from $lock (first use or a new lock; later runs reuse it; log: $venv.log)" >&2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  # pip itself first, at the release the lock pins (hash-checked), then the locked set
  awk '/^pip==/ {p = 1} p {print; if ($0 !~ /\\$/) exit}' "$lock" >"$venv/.msnb-pip.txt"
  if ! { { [ ! -s "$venv/.msnb-pip.txt" ] ||
           "$venv/bin/python" -m pip install --require-hashes -r "$venv/.msnb-pip.txt"; } &&
         "$venv/bin/python" -m pip install --require-hashes -r "$lock"; } >"$venv.log" 2>&1; then
    echo "pip failed for $venv; the last lines of $venv.log:" >&2
    grep -v "is ignored: it is neither" "$venv.log" | tail -n 20 >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

make_venv .venv-rucio requirements/rucio-server.txt
make_venv .venv requirements/toolkit.txt
# the toolkit itself, editable, so that tests and notebooks see the working tree (checked from / so
# that the checkout's own folder on sys.path does not count); again when pyproject.toml changed, whose
# entry points (executors, phases) are the installed metadata's
installed=$(cd / && "$here/.venv/bin/python" -c 'import multisite_nb, os; print(os.path.dirname(os.path.dirname(multisite_nb.__file__)))' 2>/dev/null || true)
project_hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$installed" != "$here" ] || [ "$(cat .venv/.msnb-project 2>/dev/null)" != "$project_hash" ]; then
  .venv/bin/python -m pip install -q --no-deps -e . >>.venv.log 2>&1 || {
    echo "pip failed to install the toolkit itself (editable) into .venv; the last lines of .venv.log:" >&2
    grep -v "is ignored: it is neither" .venv.log | tail -n 20 >&2
    exit 1
  }
  echo "$project_hash" > .venv/.msnb-project
fi

# Extras, by flag: --browser (Debian's chromium, for the dashboard's end-to-end test; a test
# tool's own browser download cannot work on this network) and --postgres (Debian's PostgreSQL
# server, for `multisite-nb world up --db postgresql`). Installed once, as root, with apt-get.
debian_install() {  # $1 command that shows it is there, $2 what it is for, $3... Debian packages
  local probe=$1 what=$2; shift 2
  if eval "$probe" >/dev/null 2>&1; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's $* for $what (once)" >&2
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; } \
      >/tmp/msnb-apt.log 2>&1 || { echo "apt-get install $* failed; see /tmp/msnb-apt.log" >&2; exit 1; }
  else
    echo "$* missing: install it (Debian: apt-get install $*) for $what" >&2
  fi
}
for arg in "$@"; do
  case "$arg" in
    --browser) debian_install "command -v chromium" "the browser test" chromium ;;
    --postgres) debian_install "ls /usr/lib/postgresql/*/bin/postgres" "the PostgreSQL world" postgresql postgresql-contrib ;;
    *) echo "unknown option $arg (known: --browser --postgres)" >&2; exit 2 ;;
  esac
done
