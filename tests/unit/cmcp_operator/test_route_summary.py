"""Route status rules: counts, conditions, rollout bookkeeping, rogue pods named with reasons."""

from __future__ import annotations

from cmcp_core.attestation import Appraisal
from cmcp_core.route_status import RouteStatus, endpoints_from_status
from cmcp_operator.route_summary import (
    PodView,
    RouteTarget,
    accepted_revisions,
    next_previous,
    summarise,
)

OLD = RouteTarget("sha256:" + "01" * 32, "sha256:" + "a1" * 32)
NEW = RouteTarget("sha256:" + "02" * 32, "sha256:" + "a2" * 32)


def pod(name: str, rev: RouteTarget | None, *, ok: bool = True, owned: bool = True, reason: str = "Attested",
        terminating: bool = False, phase: str = "Running") -> PodView:
    verdict = None if rev is None else Appraisal(
        ok, reason if not ok else "Attested", "m", platform="simulated", bundle_hash=rev.bundle_hash,
        initdata_digest=rev.initdata_digest, thumbprint="kid-" + name if ok else "",
        public_jwk={"kty": "OKP", "crv": "Ed25519", "x": "x"} if ok else {})
    return PodView(name, "uid-" + name, "node", "127.0.0.9", phase, terminating, owned, verdict)


def conds(summary) -> dict[str, tuple[bool | None, str]]:  # type: ignore[no-untyped-def]
    return {c.type: (c.status, c.reason) for c in summary.conditions}


def run(pods: list[PodView], *, previous: RouteTarget | None = None, desired: int = 2,
        problem: str | None = None, ready: int | None = None):  # type: ignore[no-untyped-def]
    ready_pods = sum(1 for p in pods if p.verdict and p.verdict.attested) if ready is None else ready
    return summarise(desired=desired, min_attested=None, target=NEW, previous=previous, pods=pods,
                     ready_pods=ready_pods, bundle_problem=problem, mode="enforce", catalog_hash="c")


def test_all_attested_is_ready_and_publishes_keys() -> None:
    s = run([pod("a", NEW), pod("b", NEW)])
    c = conds(s)
    assert c["Ready"] == (True, "Attested") and c["Attested"][0] is True
    assert c["Degraded"][0] is False and c["RolloutInProgress"][0] is False
    assert s.status["attestedSummary"] == "2/2" and s.status["bundleHashShort"] == "sha256:020202020202"
    assert {p["keyThumbprint"] for p in s.status["pods"]} == {"kid-a", "kid-b"}
    assert not s.pending
    lagging = run([pod("a", NEW), pod("b", NEW)], ready=1)  # attested, kubelet not caught up yet
    assert conds(lagging)["Ready"] == (False, "WaitingForPodReady")


def test_rogue_pod_is_named_and_never_counted() -> None:
    rogue = pod("rogue", OLD, ok=False, owned=False, reason="BundleHashMismatch")
    s = run([pod("a", NEW), pod("b", NEW), rogue])
    entry = next(p for p in s.status["pods"] if p["pod"] == "rogue")
    assert entry["attested"] is False and entry["reason"] == "BundleHashMismatch"
    assert "publicKeyJwk" not in entry and "not created by" in entry["message"]
    assert s.status["attestedReplicas"] == 2
    assert "rogue (BundleHashMismatch)" in next(c.message for c in s.conditions if c.type == "Attested")
    assert not s.pending  # a stranger does not make the loop poll fast


def test_deleted_pod_degrades_until_replacement() -> None:
    s = run([pod("a", NEW), pod("b", None, phase="Pending")])
    assert conds(s)["Degraded"] == (True, "InsufficientAttestedPods")
    assert conds(s)["Ready"][0] is False and s.pending
    gone = run([pod("a", NEW), pod("b", NEW, terminating=True)])
    assert next(p for p in gone.status["pods"] if p["pod"] == "b")["reason"] == "PodTerminating"
    assert conds(gone)["Degraded"][0] is True


def test_rollout_keeps_previous_until_enough_new_attested() -> None:
    mid = run([pod("o1", OLD), pod("o2", OLD), pod("n1", NEW)], previous=OLD)
    assert mid.previous == OLD
    assert conds(mid)["RolloutInProgress"][0] is True and conds(mid)["Ready"] == (False, "RolloutInProgress")
    assert conds(mid)["Degraded"][0] is False  # old pods still serve
    done = run([pod("o1", OLD), pod("n1", NEW), pod("n2", NEW)], previous=OLD)
    assert done.previous is None and done.status["previous"] is None
    # the old pod still in the list makes it a rollout until the Deployment removes it
    assert conds(done)["RolloutInProgress"][0] is True
    final = run([pod("n1", NEW), pod("n2", NEW)])
    assert conds(final)["Ready"][0] is True


def test_bundle_problem_blocks_ready() -> None:
    s = run([pod("a", NEW), pod("b", NEW)], problem="PolicyBundle 'b' is not valid")
    assert conds(s)["Ready"] == (False, "BundleNotReady")


def test_next_previous_and_accepted() -> None:
    assert next_previous(None, None, NEW) is None
    assert next_previous(OLD, None, NEW) == OLD
    third = RouteTarget("sha256:03", "sha256:a3")
    assert next_previous(NEW, OLD, third) == OLD  # a rollout in progress keeps the serving revision
    assert next_previous(NEW, OLD, NEW) == OLD
    assert accepted_revisions(NEW, OLD) == {NEW.initdata_digest: NEW.bundle_hash,
                                            OLD.initdata_digest: OLD.bundle_hash}


def test_route_admission_rules() -> None:
    from cmcp_operator.route_controller import route_admission_problem

    spec = {"tee": "simulated", "policyBundleRef": {"name": "b"}}
    assert "allow-simulated" in str(route_admission_problem(spec, namespace="ns", bundle_exists=True,
                                                            allow_simulated=False))
    assert route_admission_problem(spec, namespace="ns", bundle_exists=True, allow_simulated=True) is None
    missing = route_admission_problem({"tee": "tdx", "policyBundleRef": {"name": "b"}}, namespace="ns",
                                      bundle_exists=False, allow_simulated=False)
    assert missing is not None and "'b' not found" in missing


def test_status_the_operator_writes_reads_back_through_the_contract() -> None:
    """What the gateway and guard parse (cmcp_core.route_status) is exactly what was written."""
    rogue = pod("rogue", OLD, ok=False, owned=False, reason="BundleHashMismatch")
    s = run([pod("o1", OLD), pod("n1", NEW), pod("n2", NEW, terminating=True),
             pod("p", None, phase="Pending"), rogue], previous=OLD)
    doc = s.status
    parsed = RouteStatus.from_status(doc)
    assert parsed == s.route_status and parsed.to_status() == doc
    assert (parsed.target, parsed.previous) == (NEW, OLD)
    assert endpoints_from_status(doc) == ["127.0.0.9:50051", "127.0.0.9:50051"]  # o1 and n1 only


def test_hostile_status_reads_as_nothing_attested() -> None:
    for doc in (None, [], "x", {"pods": "x"}, {"pods": [1, None, {"attested": "true", "address": "h"}]},
                {"pods": [{"attested": True, "address": 7}], "previous": {"bundleHash": 1}}):
        parsed = RouteStatus.from_status(doc)
        assert parsed.attested_endpoints() == [] and parsed.previous is None
