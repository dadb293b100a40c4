#!/usr/bin/env bash
# Creates .venv and installs cMCP with its dev and bench extras from pyproject.toml.
# Idempotent: a warm machine re-runs in seconds. Used by `make demo`, `make test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then need_apt+=(python3 python3-venv python3-pip); fi
if command -v "$PY" >/dev/null 2>&1 && ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
# the e2e control plane gives pods addresses in a private network namespace (ip netns, veth)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (Python 3.11+ with venv) and re-run" >&2
    exit 1
  fi
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: cMCP needs Python 3.11 or newer; $("$PY" --version) found. Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

stamp=.venv/.cmcp-setup-stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,bench]"
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))" >&2
