"""The local Kubernetes cluster: a real control plane whose one real node (kubelet, containerd, runc)
runs the pods.

Used by the e2e tests, ``make demo-cluster`` and the operator benchmark. Entry points:
``python -m cmcp_devkit.cluster up|down|kubeconfig|status`` (:mod:`.control_plane`) and
``python -m cmcp_devkit.cluster.binaries`` (fetch or build the binaries once, print their paths).
Nothing is imported here, so each ``python -m`` entry point loads only what it needs.
"""
