"""The McpRoute control loop: one Kopf daemon per route is its only status writer.

Each pass: render the revision the PolicyBundle asks for, converge the Deployment and
Service (server-side apply), attest the pods that need it, gate them through the readiness
condition, and write status. Pod changes and route/bundle updates wake the loop; otherwise
it re-attests every ``reattest_interval`` seconds. State that must survive a restart
(expected and previous revision) lives in status; the in-memory cache only saves calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import kopf

from cmcp_core.attestation import Appraisal
from cmcp_core.digest import json_digest
from cmcp_core.initdata import ANNOTATION, InitdataError, decode_annotation
from cmcp_core.launch_policy import IMAGE_DIGEST_RE, LaunchPolicyError
from cmcp_core.route_status import RouteStatus, RouteTarget
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_operator import metrics, workloads
from cmcp_operator.attestor import EnclaveUnreachable, EvidenceFetcher, fetch_evidence
from cmcp_operator.bundles import key_to_path
from cmcp_operator.conditions import get_condition, merge_conditions, now_rfc3339, transitions
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import ATTESTED_CONDITION, COND_VALID
from cmcp_operator.events import EventRecorder, KopfEvents
from cmcp_operator.kube import Kube
from cmcp_operator.pod_appraisal import AppraisalSettings, VerifierFn, allowed_tee, appraise_pod
from cmcp_operator.route_summary import PodView, accepted_revisions, next_previous, summarise

log = logging.getLogger("cmcp_operator.routes")  # name predates the module; kept for log filters
FAST_POLL = 1.0
DEBOUNCE = 0.2
MAX_CONCURRENT_ATTEST = 8


@dataclass
class PodState:
    fingerprint: tuple[Any, ...]
    accepted_key: tuple[str, ...]
    verdict: Appraisal
    checked_at: float  # monotonic
    at: str  # RFC 3339, for status.lastAttested
    failures: int = 0


def pod_fingerprint(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """What, when changed, makes earlier evidence about this pod stale."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    containers = tuple((c.get("name"), c.get("restartCount"), c.get("containerID"), bool(c.get("started")))
                       for c in status.get("containerStatuses") or [])
    return (meta.get("uid"), status.get("podIP"), status.get("phase"),
            (meta.get("annotations") or {}).get(ANNOTATION), containers)


def _owned(pod: Mapping[str, Any], deployment: str) -> bool:
    return any(ref.get("kind") == "ReplicaSet" and str(ref.get("name", "")).startswith(deployment + "-")
               for ref in pod.get("metadata", {}).get("ownerReferences") or [])


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    cond = get_condition(pod.get("status", {}).get("conditions"), "Ready")
    return bool(cond and cond.get("status") == "True")


def route_admission_problem(spec: Mapping[str, Any], *, namespace: str, bundle_exists: bool,
                            allow_simulated: bool) -> str | None:
    """Why an McpRoute must not be admitted, or None."""
    if spec.get("tee") == "simulated" and not allow_simulated:
        return "tee: simulated is refused: the operator runs without --allow-simulated"
    image = spec.get("image")
    if image is not None and not IMAGE_DIGEST_RE.fullmatch(str(image)):
        return (f"image: {str(image)[:80]!r} is refused: the enclave image must be pinned by digest "
                "(<name>@sha256:<64 lowercase hex>), a tag can be re-pointed after the policy is measured")
    try:
        GpuRequirement.from_spec(spec.get("gpu"))
    except ValueError as exc:
        return f"gpu: {exc}"
    if not bundle_exists:
        ref = spec.get("policyBundleRef", {}).get("name", "")
        return f"policyBundleRef: PolicyBundle {ref!r} not found in namespace {namespace!r}"
    return None


def _published_gpu(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``status.gpu``: the requirement with its defaults filled in (followers apply exactly what
    the operator applied); a malformed one as written, which followers refuse as the operator does."""
    try:
        gpu = GpuRequirement.from_spec(spec.get("gpu"))
    except ValueError:
        return dict(spec["gpu"]) if isinstance(spec.get("gpu"), Mapping) else {"malformed": True}
    return None if gpu is None else gpu.to_spec()


class RouteController:
    """Owns every McpRoute's status; ``step`` is one pass, ``run`` the daemon around it.

    ``fetch`` and ``events`` default to the real gRPC call and Kopf's Events; tests pass fakes.
    """

    def __init__(self, kube: Kube, config: OperatorConfig, verifier: VerifierFn | None,
                 events: EventRecorder | None = None, fetch: EvidenceFetcher = fetch_evidence) -> None:
        self.kube = kube
        self.config = config
        self.verifier = verifier
        self.events: EventRecorder = events if events is not None else KopfEvents()
        self.fetch = fetch
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.pods: dict[str, PodState] = {}  # by pod uid
        self.applied: dict[tuple[str, str], tuple[str, float]] = {}  # rendered digest, when
        self.sem = asyncio.Semaphore(MAX_CONCURRENT_ATTEST)
        self.bundle_of: dict[tuple[str, str], str] = {}  # route -> PolicyBundle name it uses

    async def admission(self, spec: Mapping[str, Any], namespace: str) -> str | None:
        """Why the webhook must refuse this McpRoute spec, or None."""
        ref = str(spec.get("policyBundleRef", {}).get("name", ""))
        exists = await self.kube.get_bundle(namespace, ref) is not None
        return route_admission_problem(spec, namespace=namespace, bundle_exists=exists,
                                       allow_simulated=self.config.allow_simulated)

    # --- wake-ups --------------------------------------------------------------------
    def wake(self, namespace: str, name: str) -> None:
        self.wakers.setdefault((namespace, name), asyncio.Event()).set()

    def wake_bundle_users(self, namespace: str, bundle: str) -> None:
        for (ns, route), ref in list(self.bundle_of.items()):
            if ns == namespace and ref == bundle:
                self.wake(ns, route)

    def forget(self, namespace: str, name: str) -> None:
        self.wakers.pop((namespace, name), None)
        self.bundle_of.pop((namespace, name), None)
        self.applied.pop((namespace, name), None)
        metrics.forget_route(f"{namespace}/{name}")

    def forget_pod(self, uid: str) -> None:
        self.pods.pop(uid, None)

    async def run(self, namespace: str, name: str, stopped: kopf.DaemonStopped) -> None:
        """Daemon body: reconcile, then sleep until woken or the next re-attestation."""
        event = self.wakers.setdefault((namespace, name), asyncio.Event())
        while not stopped:
            event.clear()
            try:
                delay = await self.step(namespace, name)
                metrics.RECONCILES.labels("McpRoute", "ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.RECONCILES.labels("McpRoute", "error").inc()
                log.exception("reconcile of McpRoute %s/%s failed; retrying", namespace, name)
                delay = 2.0
            woken = asyncio.ensure_future(event.wait())
            stopping = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({woken, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                stopping.cancel()
            if event.is_set() and not stopped:
                await asyncio.sleep(DEBOUNCE)  # coalesce a burst of pod events into one pass

    # --- one pass ----------------------------------------------------------------------
    async def step(self, namespace: str, name: str) -> float:
        route = await self.kube.get_route(namespace, name)
        if route is None or route["metadata"].get("deletionTimestamp"):
            return self.config.reattest_interval
        spec: dict[str, Any] = route.get("spec", {})
        status: dict[str, Any] = dict(route.get("status") or {})
        old = RouteStatus.from_status(status)
        generation = int(route["metadata"].get("generation", 0))
        old_target, old_previous = old.target, old.previous
        target, previous = old_target, old_previous

        bundle_name = str(spec.get("policyBundleRef", {}).get("name", ""))
        self.bundle_of[(namespace, name)] = bundle_name
        bundle = await self.kube.get_bundle(namespace, bundle_name)
        problem = self._bundle_problem(bundle, bundle_name)
        mode, catalog = old.enforcement_mode, old.catalog_hash
        if problem is None and bundle is not None:
            bstatus = bundle["status"]
            files = await self.kube.get_configmap_data(namespace, str(bstatus["configMapName"]))
            if files is None:
                problem = f"bundle ConfigMap {bstatus['configMapName']} is missing"
            else:
                try:
                    rev = workloads.revision(namespace, name, spec, bstatus,
                                             [key_to_path(k) for k in files], self.config)
                except LaunchPolicyError as exc:  # an image by tag: deploy nothing, say why
                    problem = str(exc)
                else:
                    target = RouteTarget(rev.bundle_hash, rev.initdata_digest)
                    previous = next_previous(old_target, old_previous, target)
                    mode, catalog = rev.enforcement_mode, rev.catalog_hash
                    await self._converge(route, spec, rev)

        accepted = accepted_revisions(target, previous)
        pods = await self.kube.list_route_pods(namespace, name)
        views = await self._attest_all(namespace, name, spec, pods, accepted)
        summary = summarise(
            desired=int(spec.get("replicas", 2)), min_attested=spec.get("minAttested"),
            target=target, previous=previous, pods=views,
            ready_pods=sum(1 for p in pods if _pod_ready(p) and not p["metadata"].get("deletionTimestamp")),
            bundle_problem=problem, mode=mode, catalog_hash=catalog, gpu=_published_gpu(spec))
        old_conditions = list(old.conditions or [])
        workload = workloads.workload_name(name)
        merged = merge_conditions(old_conditions, summary.conditions, generation=generation)
        new = replace(summary.route_status, observed_generation=generation, service_name=workload,
                      deployment_name=workload, conditions=tuple(merged))
        new_status = new.to_status()
        if summary.previous is None and previous is not None:
            self.events.event(route, type="Normal", reason="RolloutComplete",
                              message=f"all replicas attested at {target.bundle_hash if target else '?'}")
        if target != old_target and target is not None:
            self.events.event(route, type="Normal", reason="RolloutStarted",
                              message=f"expected bundle {target.bundle_hash} "
                                      f"(initdata {target.initdata_digest})")
        for cond in transitions(old_conditions, new_status["conditions"]):
            bad = (cond["type"] == "Degraded") == (cond["status"] == "True")
            self.events.event(route, type="Warning" if bad else "Normal",
                              reason=f"{cond['type']}{cond['status']}",
                              message=f"{cond.get('reason')}: {cond.get('message')}")
        metrics.ATTESTED_PODS.labels(f"{namespace}/{name}").set(new.attested_replicas)
        if _differs(status, new_status):
            await self.kube.patch_route_status(namespace, name, new_status)
        return FAST_POLL if summary.pending else self.config.reattest_interval

    def _bundle_problem(self, bundle: Mapping[str, Any] | None, name: str) -> str | None:
        if bundle is None:
            return f"PolicyBundle {name!r} not found"
        bstatus = bundle.get("status") or {}
        valid = get_condition(bstatus.get("conditions"), COND_VALID)
        if not valid or valid.get("status") != "True":
            return f"PolicyBundle {name!r} is not valid: {(valid or {}).get('message', 'not reconciled yet')}"
        if not bstatus.get("bundleHash") or not bstatus.get("configMapName"):
            return f"PolicyBundle {name!r} has no bundle hash yet"
        deleting = bool(bundle["metadata"].get("deletionTimestamp"))  # deletion bumps generation
        if bstatus.get("observedGeneration") != bundle["metadata"].get("generation") and not deleting:
            return f"PolicyBundle {name!r} has changes the operator has not reconciled yet"
        return None

    async def _converge(self, route: Mapping[str, Any], spec: Mapping[str, Any],
                        rev: workloads.Revision) -> None:
        ns, name = route["metadata"]["namespace"], route["metadata"]["name"]
        owner = workloads.owner_reference(route)
        dep = workloads.deployment(ns, name, spec, rev, self.config, owner)
        svc = workloads.service(ns, name, spec, owner)
        rendered = json_digest([dep, svc])
        last = self.applied.get((ns, name))
        if last and last[0] == rendered and time.monotonic() - last[1] < self.config.reattest_interval:
            return
        await self.kube.apply(svc)
        await self.kube.apply(dep)
        if not last or last[0] != rendered:
            log.info("applied Deployment/Service for %s/%s at %s", ns, name, rev.bundle_hash)
        self.applied[(ns, name)] = (rendered, time.monotonic())

    # --- attestation ------------------------------------------------------------------
    async def _attest_all(self, namespace: str, name: str, spec: Mapping[str, Any],
                          pods: list[dict[str, Any]], accepted: dict[str, str]) -> list[PodView]:
        tee = str(spec.get("tee", "tdx"))
        gpu, gpu_problem = None, None
        try:
            gpu = GpuRequirement.from_spec(spec.get("gpu"))
        except ValueError as exc:  # the CRD schema and the webhook refuse it first; fail closed anyway
            gpu_problem = f"spec.gpu: {exc}"
        settings = AppraisalSettings(
            allowed_tee=allowed_tee(tee, allow_simulated=self.config.allow_simulated),
            policy=self.config.appraisal, gpu=gpu, gpu_problem=gpu_problem)
        deploy = workloads.workload_name(name)
        return list(await asyncio.gather(*(
            self._attest_one(namespace, name, pod, accepted, settings, _owned(pod, deploy)) for pod in pods)))

    def _due(self, uid: str, fingerprint: tuple[Any, ...], key: tuple[str, ...]) -> bool:
        state = self.pods.get(uid)
        if state is None or state.fingerprint != fingerprint or state.accepted_key != key:
            return True
        age = time.monotonic() - state.checked_at
        if state.verdict.attested:
            return bool(age >= self.config.reattest_interval)
        backoff = min(self.config.reattest_interval, 0.5 * 2 ** min(state.failures, 8))
        return bool(age >= backoff)

    async def _attest_one(self, namespace: str, route: str, pod: dict[str, Any], accepted: dict[str, str],
                          settings: AppraisalSettings, owned: bool) -> PodView:
        meta, pstatus = pod["metadata"], pod.get("status", {})
        uid, pname = str(meta["uid"]), str(meta["name"])
        address = str(pstatus.get("podIP") or "")
        view = PodView(name=pname, uid=uid, node=str(pod.get("spec", {}).get("nodeName") or ""),
                       address=address, phase=str(pstatus.get("phase", "")),
                       terminating=bool(meta.get("deletionTimestamp")), owned=owned, verdict=None)
        if view.terminating or view.phase != "Running" or not address:
            self.pods.pop(uid, None)
            return view
        fingerprint = pod_fingerprint(pod)
        key = tuple(f"{d}={h}" for d, h in sorted(accepted.items()))
        if self._due(uid, fingerprint, key):
            async with self.sem:
                verdict = await self._appraise(namespace, route, pod, address, accepted, settings)
            old = self.pods.get(uid)
            failures = 0 if verdict.attested else (old.failures + 1 if old and old.fingerprint == fingerprint
                                                   else 1)
            self.pods[uid] = PodState(fingerprint, key, verdict, time.monotonic(), now_rfc3339(), failures)
            before = (old.verdict.attested, old.verdict.reason) if old else None
            if before != (verdict.attested, verdict.reason):
                level = "Normal" if verdict.attested else "Warning"
                reason = "PodAttested" if verdict.attested else "AttestationFailed"
                self.events.event({"apiVersion": "v1", "kind": "Pod", **pod}, type=level, reason=reason,
                                  message=f"{verdict.reason}: {verdict.message}")
                log.info("pod %s/%s: %s (%s)", namespace, pname, verdict.reason, verdict.message)
        state = self.pods[uid]
        await self._gate(namespace, pod, state.verdict)
        return PodView(name=view.name, uid=uid, node=view.node, address=address, phase=view.phase,
                       terminating=False, owned=owned, verdict=state.verdict, last_attested=state.at)

    async def _appraise(self, namespace: str, route: str, pod: Mapping[str, Any], address: str,
                        accepted: dict[str, str], settings: AppraisalSettings) -> Appraisal:
        started = time.monotonic()
        try:
            raw = (pod["metadata"].get("annotations") or {}).get(ANNOTATION)
            try:
                pod_initdata = decode_annotation(raw) if raw else None
            except InitdataError:
                pod_initdata = None
            try:
                nonce, evidence = await self.fetch(address, deadline=self.config.attest_timeout)
            except EnclaveUnreachable as exc:
                verdict = Appraisal(False, "EnclaveUnreachable", str(exc)[:300])
            else:
                verdict = appraise_pod(evidence, nonce=nonce, pod_initdata=pod_initdata,
                                       route=f"{namespace}/{route}", accepted=accepted,
                                       settings=settings, verifier=self.verifier)
        except Exception as exc:  # never let one pod break the loop; it just is not attested
            log.exception("attestation of %s failed unexpectedly", pod["metadata"]["name"])
            verdict = Appraisal(False, "AttestationError", f"{type(exc).__name__}: {exc}"[:300])
        metrics.ATTEST_SECONDS.observe(time.monotonic() - started)
        metrics.ATTESTATIONS.labels("attested" if verdict.attested else verdict.reason).inc()
        return verdict

    async def _gate(self, namespace: str, pod: Mapping[str, Any], verdict: Appraisal) -> None:
        """Patch the readiness-gate condition only when it changes (no status churn)."""
        current = get_condition(pod.get("status", {}).get("conditions"), ATTESTED_CONDITION)
        want = "True" if verdict.attested else "False"
        if current and current.get("status") == want and current.get("reason") == verdict.reason:
            return
        await self.kube.set_attested_condition(namespace, str(pod["metadata"]["name"]), verdict.attested,
                                               verdict.reason, verdict.message, now_rfc3339())


def _differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())
