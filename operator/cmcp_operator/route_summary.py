"""Route status from what the operator observed: counts, conditions, the pods[] list the
gateway reads, and when a rollout is complete. Pure, so every rule here has a unit test.

The result is a :class:`cmcp_core.route_status.RouteStatus`, the typed status the gateway
and guard read back; this module decides its values, never its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cmcp_core.attestation import Appraisal
from cmcp_core.route_status import PodStatus, RouteStatus, RouteTarget, short_hash
from cmcp_operator.conditions import Condition
from cmcp_operator.constants import COND_ATTESTED, COND_DEGRADED, COND_READY, COND_ROLLOUT

__all__ = ["PodView", "RouteSummary", "RouteTarget", "accepted_revisions", "next_previous", "pod_status",
           "summarise"]


@dataclass(frozen=True)
class PodView:
    """One pod carrying the route label, as the operator last saw it."""

    name: str
    uid: str
    node: str
    address: str
    phase: str
    terminating: bool
    owned: bool  # created by our Deployment's ReplicaSet
    verdict: Appraisal | None
    last_attested: str = ""


def accepted_revisions(target: RouteTarget | None, previous: RouteTarget | None) -> dict[str, str]:
    """initdata digest -> bundle hash of every revision allowed to serve right now."""
    accepted: dict[str, str] = {}
    if previous is not None:
        accepted[previous.initdata_digest] = previous.bundle_hash
    if target is not None:
        accepted[target.initdata_digest] = target.bundle_hash
    return accepted


def next_previous(old_target: RouteTarget | None, old_previous: RouteTarget | None,
                  new_target: RouteTarget) -> RouteTarget | None:
    """On a revision change, keep the last revision that may still be serving.

    If a rollout was already in progress its ``previous`` is the one actually serving, so
    it stays; otherwise the old target becomes ``previous``.
    """
    if old_target is None or old_target == new_target:
        return old_previous
    return old_previous if old_previous is not None else old_target


def pod_status(pod: PodView, target: RouteTarget | None) -> PodStatus:
    """The ``status.pods[]`` entry for one pod: why it is (not) serving, and its key if attested."""
    v = pod.verdict
    base = PodStatus(pod=pod.name, uid=pod.uid, node=pod.node, address=pod.address, attested=False)
    if pod.terminating:
        return replace(base, reason="PodTerminating", message="pod is being deleted")
    if v is None:
        waiting = "Pending" if pod.phase != "Running" or not pod.address else "AttestationPending"
        return replace(base, reason=waiting, message=f"pod phase {pod.phase}")
    message = v.message[:512]
    if not pod.owned:
        message = ("not created by this route's Deployment; " + message)[:512]
    entry = replace(base, attested=v.attested, platform=v.platform, reported_bundle_hash=v.bundle_hash,
                    reason=v.reason, message=message,
                    current=bool(target and v.initdata_digest == target.initdata_digest),
                    last_attested=pod.last_attested or None, gpu=v.gpu)
    if v.attested:
        entry = replace(entry, key_thumbprint=v.thumbprint, public_key_jwk=dict(v.public_jwk),
                        assurance=v.assurance)
    return entry


@dataclass(frozen=True)
class RouteSummary:
    route_status: RouteStatus  # without observedGeneration, names and conditions (the loop adds them)
    conditions: list[Condition]
    previous: RouteTarget | None
    pending: bool  # something is still settling: poll fast

    @property
    def status(self) -> dict[str, Any]:
        return self.route_status.to_status()


def summarise(*, desired: int, min_attested: int | None, target: RouteTarget | None,
              previous: RouteTarget | None, pods: list[PodView], ready_pods: int, bundle_problem: str | None,
              mode: str = "", catalog_hash: str = "", gpu: dict[str, Any] | None = None) -> RouteSummary:
    entries = [pod_status(p, target) for p in sorted(pods, key=lambda p: p.name)]
    live = [e for e in entries if e.reason != "PodTerminating"]
    attested = [e for e in live if e.attested]
    current = [e for e in attested if e.current]
    waiting = ("Pending", "AttestationPending")
    rejected = [e for e in live if not e.attested and e.reason not in waiting]
    n_current = len(current)
    floor = desired if min_attested is None else min_attested
    if previous is not None and target is not None and n_current >= desired:
        previous = None  # rollout complete: the old revision may no longer serve
    rollout = previous is not None or any(
        p.owned and not p.terminating and p.verdict is not None and target is not None
        and p.verdict.initdata_digest != target.initdata_digest for p in pods)

    conds: list[Condition] = []
    names = ", ".join(f"{e.pod} ({e.reason})" for e in rejected[:5])
    if target is None:
        conds.append(Condition(COND_ATTESTED, False, "NoExpectedBundle", bundle_problem or "no bundle yet"))
    elif n_current >= desired:
        conds.append(Condition(COND_ATTESTED, True, "AllAttested",
                               f"{n_current}/{desired} pods attested at {short_hash(target.bundle_hash)}"
                               + (f"; rejected: {names}" if names else "")))
    else:
        conds.append(Condition(COND_ATTESTED, False, "PodsRejected" if rejected else "AttestationIncomplete",
                               f"{n_current}/{desired} pods attested at {short_hash(target.bundle_hash)}"
                               + (f"; rejected: {names}" if names else "")))
    serving = len(attested)
    degraded = serving < floor or (target is not None and desired > 0 and serving == 0)
    if degraded:
        conds.append(Condition(COND_DEGRADED, True, "InsufficientAttestedPods",
                               f"{serving} attested pods serving, want at least {floor}"))
    else:
        conds.append(Condition(COND_DEGRADED, False, "Healthy", f"{serving} attested pods serving"))
    if rollout and target is not None:
        conds.append(Condition(COND_ROLLOUT, True, "RollingOut",
                               f"{n_current}/{desired} at {short_hash(target.bundle_hash)}"
                               + (f", previous {short_hash(previous.bundle_hash)} still serving"
                                  if previous else "")))
    else:
        conds.append(Condition(COND_ROLLOUT, False, "Complete", "no rollout in progress"))
    if bundle_problem:
        conds.append(Condition(COND_READY, False, "BundleNotReady", bundle_problem))
    elif target is None:
        conds.append(Condition(COND_READY, False, "NoExpectedBundle", "waiting for the PolicyBundle"))
    elif n_current >= max(1, floor) and ready_pods >= max(1, floor) and not rollout:
        conds.append(Condition(COND_READY, True, "Attested", f"{n_current} attested enclaves serve "
                                                               f"{short_hash(target.bundle_hash)}"))
    elif n_current >= max(1, floor) and not rollout:
        conds.append(Condition(COND_READY, False, "WaitingForPodReady",
                               f"{n_current} attested, {ready_pods} Ready (kubelet has not caught up)"))
    elif rollout:
        conds.append(Condition(COND_READY, False, "RolloutInProgress",
                               f"{n_current}/{desired} attested at the new hash"))
    else:
        conds.append(Condition(COND_READY, False, "NotEnoughAttested",
                               f"{n_current}/{max(1, floor)} attested"))

    status = RouteStatus(
        replicas=len(live), attested_replicas=n_current, ready_replicas=ready_pods,
        updated_replicas=len([e for e in live if e.current]), attested_summary=f"{n_current}/{desired}",
        pods=tuple(entries[:256]), target=target, enforcement_mode=mode, catalog_hash=catalog_hash,
        previous=previous, gpu=gpu)
    # Poll fast only while our own pods settle; a rejected stranger is re-checked on the slow clock.
    owned_live = [p for p in pods if p.owned and not p.terminating]
    pending = rollout or len(owned_live) != desired or any(
        p.verdict is None or not p.verdict.attested for p in owned_live)
    return RouteSummary(route_status=status, conditions=conds, previous=previous, pending=pending)

