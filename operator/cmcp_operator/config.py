"""Operator settings from the command line; one frozen object shared by every handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from cmcp_core.verify import AppraisalPolicy

# By digest only (the launch policy pins it). The all-zero digest names no image: a deployment
# that does not set --enclave-image fails at pull rather than running an unpinned tag.
DEFAULT_IMAGE = "ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "0" * 64


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty + all_namespaces -> cluster-wide
    all_namespaces: bool = False
    # Built by cmcp_core.appraisal_options from --release-manifest/--release-key/...; the default
    # has no release, so every guest is refused (REFERENCE_VALUES_MISSING) until one is configured.
    appraisal: AppraisalPolicy = field(default_factory=AppraisalPolicy)
    reattest_interval: float = 30.0
    attest_timeout: float = 5.0
    enclave_image: str = DEFAULT_IMAGE
    runtime_classes: dict[str, str] = field(default_factory=lambda: {
        "tdx": "kata-qemu-tdx", "snp": "kata-qemu-snp", "any": "kata-cc", "simulated": ""})
    # Routes with spec.gpu: Kata's GPU passthrough runtime classes (by TEE), the device plugin's
    # resource name, and what the enclave collects evidence from (simulated: --allow-simulated only).
    gpu_runtime_classes: dict[str, str] = field(default_factory=lambda: {
        "tdx": "kata-qemu-nvidia-gpu-tdx", "snp": "kata-qemu-nvidia-gpu-snp"})
    gpu_resource: str = "nvidia.com/pgpu"
    gpu_provider: str = "nvidia"
    initdata_algorithm: str = "sha384"
    gateway_keys: tuple[str, ...] = ()  # pinned into every initdata (cmcp_core.gateway_identity)
    webhook_port: int | None = None
    webhook_host: str | None = None
    webhook_listen: str = "0.0.0.0"  # noqa: S104 - the apiserver must reach us
    webhook_cert_dir: str | None = None  # tls.crt/tls.key/ca.crt supplied (e.g. by the chart)
    webhook_service: str | None = None  # "namespace/name[:port]": clientConfig.service instead of url
    metrics_port: int | None = None
    peering: str | None = None  # Kopf peering name; None -> standalone (single replica)
    priority: int = 0  # Kopf peering priority: the highest live replica is the active one
    liveness_endpoint: str | None = None
    verbose: bool = False

    @property
    def allow_simulated(self) -> bool:
        """Simulated evidence and ``tee: simulated`` routes are accepted (development only)."""
        return self.appraisal.allow_simulated

    def runtime_class(self, tee: str, override: str | None, *, gpu: bool = False) -> str | None:
        if override:
            return override
        if gpu and tee in self.gpu_runtime_classes:
            return self.gpu_runtime_classes[tee] or None
        return self.runtime_classes.get(tee) or None
