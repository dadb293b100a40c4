"""The ``McpRoute`` status contract.

:class:`RouteStatus` / :class:`PodStatus` are the typed status the operator writes
(``to_status``) and the gateway and guard read (``from_status``); this module is the only
place that knows the status dict's keys. Reading it from the apiserver is
:mod:`cmcp_core.route_source` (the ``kubernetes`` extra), so this contract costs no
Kubernetes client.

Endpoints: ``status.pods[]`` entries (:class:`PodStatus`) with ``address`` ("ip" or
"ip:port", port default 50051), skipped unless ``attested`` is true (the operator has not
appraised it yet, or it failed; attesting it ourselves would only cost a round trip to an
enclave that is not serving).

"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_core.crd import GROUP as GROUP
from cmcp_core.crd import ROUTE_PLURAL
from cmcp_core.crd import VERSION as VERSION

PLURAL = ROUTE_PLURAL
DEFAULT_PORT = 50051


@dataclass(frozen=True)
class RouteRef:
    """Which ``McpRoute`` to follow."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> RouteRef:
        """``NAMESPACE/NAME`` (the CLI form); ``ValueError`` for anything else."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def short_hash(tagged: str, length: int = 12) -> str:
    """sha256:0f30eae7f468 — what printer columns show."""
    algo, _, hexpart = tagged.partition(":")
    return f"{algo}:{hexpart[:length]}" if hexpart else tagged


@dataclass(frozen=True)
class RouteTarget:
    """One revision of a route: the bundle and the initdata (measured configuration) pinning it."""

    bundle_hash: str
    initdata_digest: str

    def to_status(self) -> dict[str, str]:
        return {"bundleHash": self.bundle_hash, "initdataDigest": self.initdata_digest}

    @classmethod
    def from_status(cls, doc: Any) -> RouteTarget | None:
        if isinstance(doc, Mapping) and doc.get("bundleHash") and doc.get("initdataDigest"):
            return cls(str(doc["bundleHash"]), str(doc["initdataDigest"]))
        return None


@dataclass(frozen=True)
class PodStatus:
    """One ``status.pods[]`` entry. ``None`` fields are left out of the status (not set to null):
    they say "the operator has not got that far for this pod"."""

    pod: str
    uid: str
    node: str
    address: str
    attested: bool
    reason: str | None = None
    message: str | None = None
    platform: str | None = None
    reported_bundle_hash: str | None = None
    current: bool | None = None
    last_attested: str | None = None
    key_thumbprint: str | None = None
    public_key_jwk: dict[str, str] | None = None
    assurance: str | None = None
    gpu: dict[str, Any] | None = None  # the route requires GPUs: {attested, code, revocation, ...}

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"pod": self.pod, "uid": self.uid, "node": self.node,
                                 "address": self.address, "attested": self.attested}
        optional = {"reason": self.reason, "message": self.message, "platform": self.platform,
                    "reportedBundleHash": self.reported_bundle_hash, "current": self.current,
                    "lastAttested": self.last_attested, "keyThumbprint": self.key_thumbprint,
                    "publicKeyJwk": None if self.public_key_jwk is None else dict(self.public_key_jwk),
                    "assurance": self.assurance,
                    "gpu": None if self.gpu is None else dict(self.gpu)}
        entry.update({k: v for k, v in optional.items() if v is not None})
        return entry

    @classmethod
    def from_status(cls, doc: Mapping[str, Any]) -> PodStatus:
        """Lenient: a field of the wrong type reads as absent; only a literal ``true`` is attested."""
        jwk = doc.get("publicKeyJwk")
        current = doc.get("current")
        return cls(pod=_text(doc.get("pod")) or "", uid=_text(doc.get("uid")) or "",
                   node=_text(doc.get("node")) or "", address=_text(doc.get("address")) or "",
                   attested=doc.get("attested") is True, reason=_text(doc.get("reason")),
                   message=_text(doc.get("message")), platform=_text(doc.get("platform")),
                   reported_bundle_hash=_text(doc.get("reportedBundleHash")),
                   current=current if isinstance(current, bool) else None,
                   last_attested=_text(doc.get("lastAttested")),
                   key_thumbprint=_text(doc.get("keyThumbprint")),
                   public_key_jwk=({str(k): str(v) for k, v in jwk.items()} if isinstance(jwk, Mapping)
                                   else None),
                   assurance=_text(doc.get("assurance")),
                   gpu=dict(gpu) if isinstance(gpu := doc.get("gpu"), Mapping) else None)

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` to dial (``address`` may omit the port)."""
        return self.address if ":" in self.address else f"{self.address}:{DEFAULT_PORT}"


@dataclass(frozen=True)
class RouteStatus:
    """``McpRoute.status``. Fields at their zero value are still written (the counts, ``pods``
    and ``previous``, which clears to null); ``None`` and empty strings are left out."""

    replicas: int = 0
    attested_replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    attested_summary: str = ""
    pods: tuple[PodStatus, ...] = ()
    target: RouteTarget | None = None  # bundleHash / bundleHashShort / initdataDigest
    enforcement_mode: str = ""
    catalog_hash: str = ""
    previous: RouteTarget | None = None  # the revision still allowed to serve during a rollout
    observed_generation: int | None = None
    service_name: str | None = None
    deployment_name: str | None = None
    conditions: tuple[dict[str, Any], ...] | None = None  # Kubernetes conditions, as merged
    # The GPU requirement (spec.gpu) the operator appraised the pods under: followers (the
    # gateway) require the same GPU evidence when they attest the pods themselves. Written as
    # null when the route requires none, so a removed requirement clears.
    gpu: dict[str, Any] | None = None

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "replicas": self.replicas,
            "attestedReplicas": self.attested_replicas,
            "readyReplicas": self.ready_replicas,
            "updatedReplicas": self.updated_replicas,
            "attestedSummary": self.attested_summary,
            "pods": [p.to_status() for p in self.pods],
        }
        if self.target is not None:
            status.update(bundleHash=self.target.bundle_hash,
                          bundleHashShort=short_hash(self.target.bundle_hash),
                          initdataDigest=self.target.initdata_digest)
        if self.enforcement_mode:
            status["enforcementMode"] = self.enforcement_mode
        if self.catalog_hash:
            status["catalogHash"] = self.catalog_hash
        status["previous"] = self.previous.to_status() if self.previous else None
        status["gpu"] = None if self.gpu is None else dict(self.gpu)
        if self.observed_generation is not None:
            status["observedGeneration"] = self.observed_generation
        if self.service_name is not None:
            status["serviceName"] = self.service_name
        if self.deployment_name is not None:
            status["deploymentName"] = self.deployment_name
        if self.conditions is not None:
            status["conditions"] = [dict(c) for c in self.conditions]
        return status

    @classmethod
    def from_status(cls, doc: Any) -> RouteStatus:
        """Whatever the API server returned (possibly nothing, possibly hostile): never raises."""
        if not isinstance(doc, Mapping):
            return cls()
        pods = doc.get("pods")
        conditions = doc.get("conditions")
        generation = doc.get("observedGeneration")
        return cls(
            replicas=_count(doc.get("replicas")),
            attested_replicas=_count(doc.get("attestedReplicas")),
            ready_replicas=_count(doc.get("readyReplicas")),
            updated_replicas=_count(doc.get("updatedReplicas")),
            attested_summary=_text(doc.get("attestedSummary")) or "",
            pods=tuple(PodStatus.from_status(p) for p in (pods if isinstance(pods, list) else [])
                       if isinstance(p, Mapping)),
            target=RouteTarget.from_status(doc),
            enforcement_mode=_text(doc.get("enforcementMode")) or "",
            catalog_hash=_text(doc.get("catalogHash")) or "",
            previous=RouteTarget.from_status(doc.get("previous")),
            observed_generation=generation if isinstance(generation, int) and not isinstance(generation, bool)
            else None,
            service_name=_text(doc.get("serviceName")), deployment_name=_text(doc.get("deploymentName")),
            conditions=(tuple(dict(c) for c in conditions if isinstance(c, Mapping))
                        if isinstance(conditions, list) else None),
            gpu=_gpu(doc.get("gpu")))

    def attested_endpoints(self) -> list[str]:
        """The ``HOST:PORT`` of every pod the operator marked attested, in status order."""
        return [p.endpoint for p in self.pods if p.attested and p.address]

    def pinned_initdata(self) -> frozenset[str]:
        """The measured configurations the route may serve now: its target and, mid-rollout, the
        previous one. Empty while the operator has rendered nothing, so a follower pins nothing
        and trusts no enclave."""
        return frozenset(t.initdata_digest for t in (self.target, self.previous) if t is not None)


RouteReader = Callable[[], Awaitable[RouteStatus]]
"""Where a follower reads a route's status (e.g. ``cmcp_core.route_source.McpRouteSource(...).read``);
raises when it cannot tell."""


def _gpu(value: Any) -> dict[str, Any] | None:
    """Absent or null: no GPU required. Anything else is kept as is, for the follower to parse
    (``cmcp_core.verify.gpu_requirement.GpuRequirement.from_spec``) and refuse if malformed."""
    if value is None:
        return None
    return dict(value) if isinstance(value, Mapping) else {"malformed": True}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def endpoints_from_status(status: Any) -> list[str]:
    """The ``HOST:PORT`` of every pod entry the operator marked attested, in status order."""
    return RouteStatus.from_status(status).attested_endpoints()
