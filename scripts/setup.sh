#!/usr/bin/env bash
# Creates .venv and installs every cMCP distribution of the workspace (editable, so tests see
# source edits) with the dev and bench extras, pinned by uv.lock. Needs only python3 with venv:
# uv itself is bootstrapped into .venv with pip at the version the lock also holds.
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
# the official MCP conformance suite is npm ci'd from the project's lockfile (cmcp_devkit.mcp_conformance);
# any npm will do: the Node 22 the suite runs on comes from that lockfile
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# tests start private PostgreSQL clusters from Debian's server package (cmcp_devkit.postgres)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 \
  || need_apt+=(postgresql)
# the e2e cluster's real node (cmcp_devkit.cluster.node, root only: a kubelet runs pods through its own
# containerd, runc and the bridge/host-local CNI plugins, and needs iptables and conntrack on the host;
# its NetworkPolicy engine's nftables table is inspected and removed with nft;
# its confidential-node stand-in is a FUSE file system: libfuse3 from Debian's fuse3)
if [ "$(id -u)" = 0 ]; then
  for p in containerd runc iptables conntrack; do command -v "$p" >/dev/null 2>&1 || need_apt+=("$p"); done
  command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
  [ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
  command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
fi
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (Python 3.11+ with venv) and re-run" >&2
    exit 1
  fi
fi
# images (`make images`, tests/integration/test_images.py) are built with buildah on a base made by
# mmdebstrap; installed where we can (root with apt-get), else those tests skip and `make images`
# says what to install: `make demo` does not need them
want_img=()
command -v buildah >/dev/null 2>&1 || want_img+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || want_img+=(mmdebstrap)
if ((${#want_img[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${want_img[*]} with apt-get (container images)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want_img[@]}" >/dev/null; } \
    || echo "setup: could not install ${want_img[*]}; the image tests will skip" >&2
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: cMCP needs Python 3.11 or newer; $("$PY" --version) found. Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

UV_VERSION=0.13.9  # keep equal to the "uv==" pin of the dev extra in pyproject.toml
stamp=.venv/.cmcp-setup-stamp
want=$( (sha256sum pyproject.toml ./*/pyproject.toml uv.lock; echo "uv $UV_VERSION") | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "$(.venv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
  .venv/bin/python -m pip install -q "uv==$UV_VERSION"
fi
# --locked: install exactly what uv.lock says, and stop if a pyproject.toml changed without it
# (a dependency added but not locked); --inexact: leave pip and the venv's seed packages alone.
# UV_PYTHON_DOWNLOADS=never: use the venv's interpreter, fetch none.
if ! UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
  .venv/bin/uv sync -q --locked --inexact --all-packages --extra dev --extra bench --python .venv/bin/python; then
  echo "setup: uv.lock does not match the pyproject.toml files: run .venv/bin/uv lock, commit uv.lock" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))" >&2
