"""The suite catches broken properties: run POLICY-TEE (and ATTEST-006, REPLICA-001) IDs against
deliberately weakened components.

Every weakening lives here, in test code — the product has no bypass switch. Each scenario keeps
the rest of the local deployment real (enclave processes on the simulated TEE, the guard, the
``mcp`` SDK upstream, the gateway) and swaps exactly one component, then asserts that the IDs
whose property it breaks FAIL. A baseline run first shows the same IDs PASS on the intact
deployment, so each FAIL is caused by the weakening and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cmcp_conformance import runner
from cmcp_conformance.local import AUDIENCE, LocalDeployment, LocalPowers, local_deployment
from cmcp_conformance.plugin import CheckResult
from cmcp_conformance.target import TargetDeployment
from cmcp_core import launch_policy
from cmcp_core import permit as permits
from cmcp_core.attestation import Expected
from cmcp_core.audit import entry_hash
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import args_digest
from cmcp_core.verify import appraise as appraise_module
from cmcp_core.verify import record as record_module
from cmcp_guard import middleware as guard_middleware
from cmcp_guard.check import PermitChecker
from cmcp_guard.main import build_guard
from cmcp_guard.proxy import build_proxy
from cmcp_guard.replay import ReplayCache

POLICY_TEE = ["POLICY-TEE-001", "POLICY-TEE-002", "POLICY-TEE-003", "POLICY-TEE-004", "POLICY-TEE-005"]
RELEASE_IDS = ["ATTEST-006", "POLICY-TEE-006"]  # a forged guest; the measured launch policy
IDENT_IDS = ["IDENT-001", "IDENT-002", "IDENT-003"]
METHOD_IDS = ["METHOD-001", "METHOD-002", "METHOD-003"]
GPU_IDS = ["ATTEST-007"]  # the local enclaves run with a simulated GPU


# ------------------------------------------------------------------------------------------
# plumbing
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 from a background thread; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "in-thread server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def outcomes(report: runner.Report) -> dict[str, CheckResult]:
    return {r.requirement.id: r.outcome for r in report.results}


def reasons(report: runner.Report) -> str:
    return "\n".join(report.lines())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    with local_deployment(tmp_path_factory.mktemp("weakened-base")) as d:
        yield d


# ------------------------------------------------------------------------------------------
# the intact deployment passes
# ------------------------------------------------------------------------------------------


def test_baseline_policy_tee_ids_pass_on_the_intact_deployment(deployment: LocalDeployment) -> None:
    ids = [*POLICY_TEE, *RELEASE_IDS, *IDENT_IDS, *METHOD_IDS, *GPU_IDS]
    report = runner.run(deployment.target(), ids=ids)
    assert all(o is CheckResult.PASS for o in outcomes(report).values()), reasons(report)


# ------------------------------------------------------------------------------------------
# weakened gateway: forwards tools/call without asking the enclave
# ------------------------------------------------------------------------------------------


def forwarding_gateway(upstream_mcp_url: str) -> Starlette:
    """Speaks enough MCP for the SDK client, and forwards every call straight to ``upstream``."""
    state: dict[str, Any] = {}

    async def upstream(method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
            if "sid" not in state:
                init = await http.post(
                    upstream_mcp_url,
                    headers=headers,
                    json={
                        "jsonrpc": "2.0",
                        "id": 0,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-06-18",
                            "capabilities": {},
                            "clientInfo": {"name": "weak-gateway", "version": "0"},
                        },
                    },
                )
                state["sid"] = init.headers["mcp-session-id"]
                await http.post(
                    upstream_mcp_url,
                    headers={**headers, "mcp-session-id": state["sid"]},
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                )
            resp = await http.post(
                upstream_mcp_url,
                headers={**headers, "mcp-session-id": state["sid"]},
                json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
            )
            doc: dict[str, Any] = resp.json()
            return doc

    async def handle(request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405)
        doc = json.loads(await request.body())
        if "id" not in doc:
            return Response(status_code=202)
        if doc["method"] == "initialize":
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": doc["id"],
                    "result": {
                        "protocolVersion": doc["params"].get("protocolVersion", "2025-06-18"),
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "weak", "version": "0"},
                    },
                },
                headers={"mcp-session-id": "weak-session"},
            )
        return JSONResponse(await upstream(doc["method"], doc.get("params") or {}, doc["id"]))

    return Starlette(routes=[Route("/mcp/enforce", handle, methods=["GET", "POST", "DELETE"])])


def test_gateway_that_skips_the_enclave_fails_policy_tee_001(deployment: LocalDeployment) -> None:
    # It forwards to the guarded upstream: the guard still stops every call, but the suite sees that
    # the gateway neither fails closed (TEE_UNAVAILABLE) nor answers with enclave-signed denies.
    with serve_in_thread(forwarding_gateway(deployment.upstream_url)) as base:
        target = dataclasses.replace(deployment.target(), mcp_url=f"{base}/mcp/enforce")
        report = runner.run(target, ids=["POLICY-TEE-001"])
    assert outcomes(report)["POLICY-TEE-001"] is CheckResult.FAIL, reasons(report)


def test_gateway_that_skips_enclave_and_guard_fails_the_policy_ids(deployment: LocalDeployment) -> None:
    # The same gateway wired to the unguarded server behind the guard: denied and uncatalogued tools run.
    with serve_in_thread(forwarding_gateway(f"{deployment.raw_upstream_base}/mcp")) as base:
        target = dataclasses.replace(deployment.target(), mcp_url=f"{base}/mcp/enforce")
        report = runner.run(target, ids=["POLICY-001", "POLICY-002", "POLICY-TEE-001", "METHOD-001"])
    got = outcomes(report)
    assert got == {
        "POLICY-001": CheckResult.FAIL,
        "POLICY-002": CheckResult.FAIL,
        "POLICY-TEE-001": CheckResult.FAIL,
        "METHOD-001": CheckResult.FAIL,  # it lists and reads the uncatalogued resource
    }, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened gateway replica: a session it never saw is unknown (the gateway before issue 16)
# ------------------------------------------------------------------------------------------

NO_ADOPTION = """
from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.main import main
from cmcp_gateway.sessions import SessionTable
async def refuse(self, runtime, session_id, agent):
    raise CmcpError(Code.SESSION_UNKNOWN, "never seen on this replica")
SessionTable.adopt = refuse
main()
"""


@contextlib.contextmanager
def weak_replica(deployment: LocalDeployment, code: str) -> Iterator[str]:
    """Another gateway process on the deployment's enclaves, running ``code``; its base URL."""
    port = _free_port()
    config = deployment.workdir / "weak-replica.yaml"
    config.write_text(json.dumps(deployment.gateway_config(port)))
    proc = deployment.spawn("weak-replica", [sys.executable, "-c", code, "--config", str(config)])

    def answering() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    try:
        deployment.wait_for(proc, answering, "HTTP")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        deployment.procs.remove(proc)


def test_replica_without_adoption_fails_replica_001(deployment: LocalDeployment) -> None:
    intact = runner.run(deployment.target(), ids=["REPLICA-001"])
    assert outcomes(intact)["REPLICA-001"] is CheckResult.PASS, reasons(intact)
    with weak_replica(deployment, NO_ADOPTION) as base:
        target = dataclasses.replace(deployment.target(), replica_mcp_url=f"{base}/mcp/enforce")
        report = runner.run(target, ids=["REPLICA-001"])
    assert outcomes(report)["REPLICA-001"] is CheckResult.FAIL, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened guards
# ------------------------------------------------------------------------------------------


class ForgetfulReplayCache(ReplayCache):
    """Remembers nothing: every nonce looks fresh."""

    def use(self, nonce: str, exp: int, now: float | None = None) -> None:
        return None


class SignatureBlindChecker(PermitChecker):
    """Checks the permit's bindings but not who signed it."""

    def check(
        self, token: str | None, tool: str, arguments: Mapping[str, Any], now: float | None = None
    ) -> permits.Permit:
        if not token:
            raise CmcpError(Code.PERMIT_MISSING, "no permit")
        permit, _, _ = permits.decode(token)
        if permit.aud != self.audience or permit.tool != tool or permit.args != args_digest(arguments):
            raise CmcpError(Code.PERMIT_ARGS_MISMATCH, "binding mismatch")
        if permit.exp + permits.CLOCK_SKEW_SECONDS < (now or time.time()):
            raise CmcpError(Code.PERMIT_EXPIRED, "expired")
        self.replay.use(permit.nonce, permit.exp, now=now)
        return permit


def _guard_for(deployment: LocalDeployment) -> Any:
    handles = list(deployment.enclaves.values())
    return build_guard(
        AUDIENCE,
        [h.address for h in handles],
        appraisal=replace(deployment.target().appraisal, allow_simulated=True),
        expected=Expected(bundle_hashes=frozenset(str(h.ready["bundle_hash"]) for h in handles),
                          modes=frozenset(deployment.modes())),
    )


def test_guard_without_replay_cache_fails_policy_tee_004(deployment: LocalDeployment) -> None:
    guard = _guard_for(deployment)
    guard.checker.replay = ForgetfulReplayCache()
    with serve_in_thread(build_proxy(deployment.raw_upstream_base, guard)) as base:
        target = dataclasses.replace(deployment.target(), upstream_url=f"{base}/mcp")
        report = runner.run(target, ids=["POLICY-TEE-004"])
    result = next(r for r in report.results if r.requirement.id == "POLICY-TEE-004")
    assert result.outcome is CheckResult.FAIL, reasons(report)
    assert "replayed" in result.reason.lower(), result.reason


def test_guard_that_gates_only_tool_calls_fails_method_002(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard before every method was gated: it checked permits on tools/call and let the rest
    through, so a host read resources and prompts with no permit at all."""
    monkeypatch.setattr(guard_middleware, "GATED_METHODS", frozenset({"tools/call"}))
    monkeypatch.setattr(guard_middleware, "_open_method", lambda message: None)
    with serve_in_thread(build_proxy(deployment.raw_upstream_base, _guard_for(deployment))) as base:
        target = dataclasses.replace(deployment.target(), upstream_url=f"{base}/mcp")
        report = runner.run(target, ids=["METHOD-002", "POLICY-TEE-004"])
    # Tool calls are still guarded (POLICY-TEE-004 passes); only the other methods leak.
    expected = {"METHOD-002": CheckResult.FAIL, "POLICY-TEE-004": CheckResult.PASS}
    assert outcomes(report) == expected, reasons(report)


def test_guard_that_binds_only_the_arguments_fails_method_003(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard before answers were bound: it checked the arguments' digest alone, so the host
    used the plain call's permit to carry answers no question was asked for."""
    monkeypatch.setattr(guard_middleware.Guard, "_check", lambda self, token, target: self.checker.check(
        token, target.name, target.arguments, method=target.method))
    with serve_in_thread(build_proxy(deployment.raw_upstream_base, _guard_for(deployment))) as base:
        target = dataclasses.replace(deployment.target(), upstream_url=f"{base}/mcp")
        report = runner.run(target, ids=["METHOD-003"])
    assert outcomes(report) == {"METHOD-003": CheckResult.FAIL}, reasons(report)
    assert "result" in reasons(report)  # the forged answers got past the guard and the call ran


def test_guard_that_lets_tokens_through_fails_ident_003(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard_middleware, "_AUTHORIZATION", b"x-not-looked-at")
    with serve_in_thread(build_proxy(deployment.raw_upstream_base, _guard_for(deployment))) as base:
        target = dataclasses.replace(deployment.target(), upstream_url=f"{base}/mcp")
        report = runner.run(target, ids=["IDENT-003"])
    assert outcomes(report) == {"IDENT-003": CheckResult.FAIL}, reasons(report)


def test_guard_that_ignores_signatures_fails_policy_tee_001_and_004(deployment: LocalDeployment) -> None:
    guard = _guard_for(deployment)
    guard.checker = SignatureBlindChecker(audience=AUDIENCE, keys=guard.trust.keys)
    with serve_in_thread(build_proxy(deployment.raw_upstream_base, guard)) as base:
        target = dataclasses.replace(deployment.target(), upstream_url=f"{base}/mcp")
        report = runner.run(target, ids=["POLICY-TEE-001", "POLICY-TEE-004"])
    got = outcomes(report)
    assert got == {"POLICY-TEE-001": CheckResult.FAIL, "POLICY-TEE-004": CheckResult.FAIL}, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened enclaves (real cmcp-enclave processes with one behaviour patched at start-up)
# ------------------------------------------------------------------------------------------

IGNORES_INITDATA = """
    # An enclave that trusts the bundle it was handed: it reports the hash initdata names
    # instead of re-hashing the files, so a changed bundle serves under the old initdata.
    from pathlib import Path
    from cmcp_core import initdata
    from cmcp_core.bundle import Bundle
    from cmcp_enclave import startup

    _load = startup.load_bundle

    class Claimed(Bundle):  # module level: the enclave's decision workers unpickle it
        @property
        def bundle_hash(self):
            return initdata.parse(Path(ARGS["--initdata"]).read_bytes()).cmcp.bundle_hash

    def lying_load(root):
        real = _load(root)
        return Claimed(manifest=real.manifest, policies=real.policies, schema=real.schema,
                       catalog=real.catalog)

    startup.load_bundle = lying_load
"""

RECORDS_OTHER_BUNDLE = """
    # An enclave whose Trust Records name a bundle other than the one it measured and attests.
    from cmcp_enclave import enclave

    _build = enclave.build_record

    def other_bundle(key, **fields):
        fields["bundle_hash"] = "sha256:" + "5" * 64
        return _build(key, **fields)

    enclave.build_record = other_bundle
"""

SESSION_SCOPED_STATE = """
    # The enclave before issue 16: Cedar sees only the session's own state, so a new session,
    # connection or stateless request starts the principal clean.
    import dataclasses
    from cmcp_enclave import enclave

    _view = enclave.Enclave._view

    def session_only(self, session, principal, identity=None):
        view = _view(self, session, principal, identity)
        return dataclasses.replace(view, principal=view.session)

    enclave.Enclave._view = session_only
"""

TAKES_THE_GATEWAYS_WORD = """
    # The enclave before issue 17: whatever principal the gateway names is believed (tokens are
    # still checked where the gateway asks, Authenticate).
    from cmcp_enclave import enclave

    enclave.Enclave.identify = lambda self, principal, access_token: None
"""

READS_TOKENS_UNVERIFIED = """
    # An enclave that reads a token's claims without checking its signature.
    import jwt
    from cmcp_core import identity
    from cmcp_core.errors import CmcpError, Code

    def unverified(self, token, now):
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.exceptions.PyJWTError as exc:
            raise CmcpError(Code.TOKEN_MALFORMED, str(exc)) from exc
        return self._identity(claims, next(iter(self.issuers.values())))

    identity.IdentityPolicy._verify = unverified
"""

SIGNS_WITH_UNATTESTED_KEY = """
    # An enclave that attests one key but signs decisions, permits and audit entries with another.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cmcp_core.crypto import thumbprint
    from cmcp_enclave import enclave

    _init = enclave.Enclave.__init__

    def init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self._key = Ed25519PrivateKey.generate()  # evidence still binds self.public_key
        self.kid = thumbprint(self._key.public_key())

    enclave.Enclave.__init__ = init
"""


def write_weak_enclave(directory: Path, patch: str) -> Path:
    script = directory / f"weak_enclave_{abs(hash(patch))}.py"
    script.write_text(
        "import sys\n"
        "ARGS = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        + textwrap.dedent(patch)
        # guarded: the enclave's decision workers (forkserver) import this script as their main
        + "\nfrom cmcp_enclave.main import main\n"
        + "if __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    return script


class WeakEnclaveDeployment(LocalDeployment):
    """A local deployment whose enclave processes run a patched ``cmcp-enclave``."""

    script: Path | None = None

    def enclave_argv(self, bundle_dir: Path, initdata_path: Path, listen: str, ready: Path) -> list[str]:
        argv = super().enclave_argv(bundle_dir, initdata_path, listen, ready)
        assert self.script is not None
        return [sys.executable, str(self.script), *argv[1:]]


def run_on_weak_enclave(tmp_path: Path, patch: str, ids: list[str]) -> runner.Report:
    """The suite's ``ids`` against a local deployment whose enclaves run with ``patch``."""
    weak = WeakEnclaveDeployment(workdir=tmp_path)
    weak.script = write_weak_enclave(tmp_path, patch)
    try:
        weak.start()
        return runner.run(weak.target(), ids=ids)
    finally:
        weak.close()


def test_enclave_that_ignores_initdata_fails_policy_tee_002(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    weak = WeakEnclaveDeployment(workdir=tmp_path)
    weak.script = write_weak_enclave(tmp_path, IGNORES_INITDATA)
    try:
        target = dataclasses.replace(deployment.target(), powers=LocalPowers(weak))
        report = runner.run(target, ids=["POLICY-TEE-002"])
    finally:
        weak.close()
    result = next(r for r in report.results if r.requirement.id == "POLICY-TEE-002")
    assert result.outcome is CheckResult.FAIL, reasons(report)
    assert "served a bundle" in result.reason, result.reason


def test_enclave_recording_another_bundle_fails_policy_tee_003(tmp_path: Path) -> None:
    report = run_on_weak_enclave(tmp_path, RECORDS_OTHER_BUNDLE, ["POLICY-TEE-003", "TRACE-002"])
    assert outcomes(report) == {"POLICY-TEE-003": CheckResult.FAIL, "TRACE-002": CheckResult.FAIL}, reasons(
        report
    )


def test_enclave_that_takes_the_gateways_word_fails_ident_001(tmp_path: Path) -> None:
    report = run_on_weak_enclave(tmp_path, TAKES_THE_GATEWAYS_WORD, ["IDENT-001", "IDENT-002"])
    # An agent's bad token is still refused where the gateway asks; a lying gateway is not.
    expected = {"IDENT-001": CheckResult.FAIL, "IDENT-002": CheckResult.PASS}
    assert outcomes(report) == expected, reasons(report)


def test_enclave_that_reads_tokens_unverified_fails_ident_002(tmp_path: Path) -> None:
    report = run_on_weak_enclave(tmp_path, READS_TOKENS_UNVERIFIED, ["IDENT-001", "IDENT-002"])
    expected = {"IDENT-001": CheckResult.PASS, "IDENT-002": CheckResult.FAIL}
    assert outcomes(report) == expected, reasons(report)


def test_enclave_with_session_scoped_state_fails_state_001(tmp_path: Path) -> None:
    report = run_on_weak_enclave(tmp_path, SESSION_SCOPED_STATE, ["POLICY-003", "STATE-001"])
    # Same-session taint still holds (POLICY-003); only what a new session sheds is caught.
    expected = {"POLICY-003": CheckResult.PASS, "STATE-001": CheckResult.FAIL}
    assert outcomes(report) == expected, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened gateway audit writer: outcomes never reach the store
# ------------------------------------------------------------------------------------------

DROPS_OUTCOMES = """
import json
from cmcp_gateway import audit_writer
from cmcp_gateway.main import main
_submit = audit_writer.AuditWriter.submit
def submit(self, entries):
    return _submit(self, [e for e in entries if json.loads(e)["kind"] != "complete"])
audit_writer.AuditWriter.submit = submit
main()
"""


def test_gateway_that_drops_outcomes_fails_audit_006(deployment: LocalDeployment) -> None:
    intact = runner.run(deployment.target(), ids=["AUDIT-006"])
    assert outcomes(intact)["AUDIT-006"] is CheckResult.PASS, reasons(intact)
    with weak_replica(deployment, DROPS_OUTCOMES) as base:
        target = dataclasses.replace(deployment.target(), mcp_url=f"{base}/mcp/enforce")
        report = runner.run(target, ids=["AUDIT-006"])
    result = next(r for r in report.results if r.requirement.id == "AUDIT-006")
    assert result.outcome is CheckResult.FAIL and "outcomes" in result.reason, reasons(report)


# ------------------------------------------------------------------------------------------
# host-edited audit export
# ------------------------------------------------------------------------------------------


def edit_entry(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn the first denied decision into an allow and recompute its hash, as a careful host would."""
    edited = json.loads(json.dumps(entries))
    for entry in edited:
        if entry["kind"] == "decision" and entry["data"]["effective"] == "deny":
            entry["data"]["effective"] = "allow"
            entry["hash"] = entry_hash(entry)
            return edited
    raise AssertionError("no denied decision in the export to edit")


@dataclasses.dataclass
class EditingHostTarget(TargetDeployment):
    """The audit export reaches the auditor through host storage that rewrites a deny into an allow."""

    def export_audit(self, session_id: str, *, address: str | None = None) -> list[dict[str, Any]]:
        entries = super().export_audit(session_id, address=address)
        return edit_entry(entries)


def test_host_edited_audit_export_fails_policy_tee_005(deployment: LocalDeployment) -> None:
    base = deployment.target()
    target = EditingHostTarget(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    report = runner.run(target, ids=["POLICY-TEE-005", "AUDIT-002"])
    assert outcomes(report) == {"POLICY-TEE-005": CheckResult.FAIL, "AUDIT-002": CheckResult.FAIL}, reasons(
        report
    )


def test_enclave_signing_with_an_unattested_key_fails_policy_tee_001(tmp_path: Path) -> None:
    report = run_on_weak_enclave(tmp_path, SIGNS_WITH_UNATTESTED_KEY,
                                 ["ATTEST-005", "POLICY-TEE-001", "POLICY-TEE-005"])
    expected = {
        "ATTEST-005": CheckResult.FAIL,
        "POLICY-TEE-001": CheckResult.FAIL,
        "POLICY-TEE-005": CheckResult.FAIL,
    }
    assert outcomes(report) == expected, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened appraisal: launch measurements not compared with the signed release
# ------------------------------------------------------------------------------------------


def test_appraisal_without_the_release_check_fails_attest_006(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifier the suite (and every relying party) uses, with match_release reduced to
    "some release is configured": the forged guest's evidence then appraises."""

    def any_release(platform: str, launch: Any, entry: Any, doc: Any, releases: Any) -> Any:
        return releases[0]

    monkeypatch.setattr(appraise_module, "match_release", any_release)
    report = runner.run(deployment.target(), ids=["ATTEST-006"])
    assert outcomes(report) == {"ATTEST-006": CheckResult.FAIL}, reasons(report)


def test_appraisal_without_the_gpu_check_fails_attest_007(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifier with the route's GPU requirement dropped: replayed or stripped GPU evidence
    then appraises, and ATTEST-007 says so."""
    real = appraise_module.appraise_attestation

    def without_gpu(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "gpu": None})

    monkeypatch.setattr(appraise_module, "appraise_attestation", without_gpu)
    report = runner.run(deployment.target(), ids=GPU_IDS)
    assert outcomes(report) == {"ATTEST-007": CheckResult.FAIL}, reasons(report)


def test_record_verifier_without_the_gpu_digest_check_fails_attest_007(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record verifier with the digest check dropped (ADR 0031): an Attest's GPU evidence is
    then appraised for the record, and ATTEST-007 notices it is not refused as unreferenced."""
    monkeypatch.setattr(record_module, "check_record_gpu_references", lambda _record, _envelopes: None)
    report = runner.run(deployment.target(), ids=GPU_IDS)
    assert outcomes(report) == {"ATTEST-007": CheckResult.FAIL}, reasons(report)


# ------------------------------------------------------------------------------------------
# weakened launch policy: one rule dropped, signed into the release like any other
# ------------------------------------------------------------------------------------------

ENV_PINNED = "    env_exact\n"
COPY_RULE = """CopyFileRequest if {
    startswith(input.path, expected.shared_containers)
    path_clean(input.path)
    not is_symlink
}"""
WEAK_RULES = {
    "env not pinned": launch_policy.RULES.replace(ENV_PINNED, ""),
    "CopyFile path unchecked": launch_policy.RULES.replace(COPY_RULE, "CopyFileRequest if { true }"),
}


@pytest.mark.parametrize("weakening", sorted(WEAK_RULES))
def test_launch_policy_with_a_rule_dropped_fails_policy_tee_006(
    weakening: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release whose launch policy lacks one check: the stack renders it into every initdata and
    signs its rules into the release, so attestation passes and only POLICY-TEE-006 can notice."""
    weak_rules = WEAK_RULES[weakening]
    assert weak_rules != launch_policy.RULES, f"{weakening}: the rule to drop was not found"
    monkeypatch.setattr(launch_policy, "RULES", weak_rules)
    with local_deployment(tmp_path) as weak:
        assert weak.release.release.launch_policy_rules == launch_policy.digest(weak_rules)
        report = runner.run(weak.target(), ids=["ATTEST-001", "POLICY-TEE-006"])
    got = outcomes(report)
    assert got == {"ATTEST-001": CheckResult.PASS, "POLICY-TEE-006": CheckResult.FAIL}, reasons(report)
    assert ("env LD_PRELOAD" if weakening == "env not pinned" else "CopyFile traversal") in reasons(report)
