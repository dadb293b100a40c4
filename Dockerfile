# syntax=docker/dockerfile:1
# cMCP images: one Dockerfile for the enclave, gateway, guard and operator. The build argument
# COMPONENT selects which (enclave | gateway | guard | operator); each image installs cmcp-core and
# that component's distribution only, every third-party wheel pinned by version and hash from the
# workspace lock (uv.lock), and runs its console script (cmcp-<COMPONENT>) as user 65532.
# The enclave image is the one the design trusts: no Kubernetes client, Kopf, Starlette or uvicorn.
# Build from the repository root (the context must hold pyproject.toml, uv.lock, core/ and the
# component folders: enclave_pod/, gateway/, guard/, operator/, devkit/ for the demo's image):
#   docker build --build-arg COMPONENT=enclave -t ghcr.io/cmcp-k8s/cmcp-enclave:0.1.0 .
# Both stages use the same exact-tag Python base so the venv's interpreter path matches; pin it
# further by digest in your registry mirror (e.g. python:3.11.14-slim-bookworm@sha256:...).
# `make images` builds with buildah, reproducibly, on a base made from Debian's packages where no
# registry is reachable (PYTHON_IMAGE=localhost/cmcp-base:bookworm-2, python3 + python3-venv).
# The images write nothing outside the mounts the chart declares: the root file system may be
# (and in the chart is) read-only; no bytecode is written (PYTHONDONTWRITEBYTECODE).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG COMPONENT=enclave

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A CA bundle for pip, when a TLS-inspecting proxy stands between the build and PyPI (mount it
# for the build: `make images` does); it stays in this stage, out of the image.
ARG PIP_CERT
ARG COMPONENT
WORKDIR /src
# uv only reads the lock here (same version as scripts/setup.sh); it never enters the image.
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --only-binary=:all: uv==0.13.9
COPY pyproject.toml uv.lock ./
COPY core ./core
# Every component's sources reach this stage (a COPY cannot choose a folder by the argument);
# only the selected one is installed, and only /opt/cmcp leaves the stage.
COPY enclave_pod ./enclave_pod
COPY gateway ./gateway
COPY guard ./guard
COPY operator ./operator
COPY devkit ./devkit
# Only prebuilt wheels whose hashes the lock names: a dependency that would need a compiler, or
# one the lock does not pin, fails the build. The workspace members (core, then the image's own:
# for the demo the dev kit with the enclave and guard it imports) go in without deps. The
# venv gets no pip (nor its compiled files): the build's pip installs into it. The members' wheels
# are built with the setuptools uv.lock pins (PIP_CONSTRAINT reaches pip's isolated build): its
# version is written into their dist-info, so the newest on PyPI would change the image's digest.
RUN case "${COMPONENT}" in \
      enclave) package=enclave; set -- ./enclave_pod ;; \
      gateway|guard|operator) package="${COMPONENT}"; set -- "./${COMPONENT}" ;; \
      demo) package=devkit; set -- ./enclave_pod ./guard ./devkit ;; \
      *) echo "COMPONENT must be enclave, gateway, guard, operator or demo, not '${COMPONENT}'" >&2; exit 1 ;; \
    esac \
 && /opt/build/bin/uv export --frozen --no-dev --package "cmcp-${package}" --no-emit-workspace -o requirements.txt \
 && sed -n '/^name = "setuptools"$/{n;s/^version = "\(.*\)"$/setuptools==\1/p}' uv.lock > build-constraints.txt \
 && test -s build-constraints.txt \
 && python3 -m venv --without-pip /opt/cmcp \
 && /opt/build/bin/pip --python /opt/cmcp/bin/python install --require-hashes --only-binary=:all: --no-compile \
      -r requirements.txt \
 && PIP_CONSTRAINT=/src/build-constraints.txt \
    /opt/build/bin/pip --python /opt/cmcp/bin/python install --no-deps --no-compile ./core "$@"

FROM ${PYTHON_IMAGE} AS runtime
# useradd dates the account's last password change (/etc/shadow) by it, not by the build's day:
# the same commit gives the same digest on any day (make images passes the commit's time)
ARG SOURCE_DATE_EPOCH
LABEL org.opencontainers.image.licenses="Apache-2.0"
# No compilers, no pip in the runtime image: drop the base image's installer too (if it has one).
RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall -y pip setuptools wheel; fi \
 && rm -rf /root/.cache \
 && groupadd --system --gid 65532 cmcp \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cmcp
COPY --from=build /opt/cmcp /opt/cmcp
ENV PATH=/opt/cmcp/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532

# What differs between the images: name, ports, console script (ENTRYPOINT takes no build
# argument, so each has its own stage; the last FROM picks one, and unused stages are not built).
FROM runtime AS image-enclave
LABEL org.opencontainers.image.title="cmcp-enclave" \
      org.opencontainers.image.description="cMCP enclave - Cedar decisions, session state and audit chain inside a TEE"
EXPOSE 50051 9090
ENTRYPOINT ["cmcp-enclave"]

FROM runtime AS image-gateway
LABEL org.opencontainers.image.title="cmcp-gateway" \
      org.opencontainers.image.description="cMCP gateway - MCP streamable-HTTP front door that asks the enclave"
EXPOSE 8080 9091
ENTRYPOINT ["cmcp-gateway"]

FROM runtime AS image-guard
LABEL org.opencontainers.image.title="cmcp-guard" \
      org.opencontainers.image.description="cMCP upstream guard - verifying reverse proxy in front of an MCP server"
EXPOSE 8443 9092
ENTRYPOINT ["cmcp-guard"]

FROM runtime AS image-operator
LABEL org.opencontainers.image.title="cmcp-operator" \
      org.opencontainers.image.description="cMCP Kopf operator: PolicyBundle/McpRoute, attestation-gated routing"
EXPOSE 9443 9090
ENTRYPOINT ["cmcp-operator"]

# The demo's upstream, never shipped with the product: the dev kit's MCP server and the demo's
# wiretap, for `cmcpctl demo --cluster` and the cluster tests (the guard runs from its own image).
FROM runtime AS image-demo
LABEL org.opencontainers.image.title="cmcp-demo" \
      org.opencontainers.image.description="cMCP demo upstream - the dev kit's MCP server and wiretap (demo and tests only)"
EXPOSE 8000
ENTRYPOINT ["python", "-m", "cmcp_devkit.upstream"]

# hadolint ignore=DL3006
FROM image-${COMPONENT}
