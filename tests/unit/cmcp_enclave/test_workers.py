"""Decision worker processes: they judge as the loop would, from the bundle they were given, and
a dead worker refuses its request instead of deciding it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import NO_TRAIL, start_enclave
from cmcp_devkit.procs import descendants
from cmcp_enclave.engine import CedarEngine, SessionView, StateFacts
from cmcp_enclave.judging import RequestError
from cmcp_enclave.workers import DecisionWorkers
from tests.paths import EXAMPLES

AUDIENCE = "urn:cmcp:test"
NOTHING = StateFacts("public", 0, frozenset(), 0, frozenset(), "")
VIEW = SessionView("s", principal=NOTHING, session=NOTHING)


def _fields(tool: str, args: dict[str, object], call_id: str = "c") -> dict[str, object]:
    return {"session_id": "s", "call_id": call_id, "principal": "a", "method": "tools/call", "tool": tool,
            "arguments_json": json.dumps(args).encode(), "arguments_digest": json_digest(args),
            "audience": AUDIENCE}


@pytest.fixture
async def workers(tmp_path: Path) -> DecisionWorkers:
    pool = DecisionWorkers(CedarEngine(load_bundle(EXAMPLES / "realistic")), AUDIENCE, 1)
    await pool.start()
    return pool


async def test_a_worker_judges_from_the_bundle_it_was_given_not_the_files(tmp_path: Path) -> None:
    """The host may rewrite the bundle on disk after start-up; workers never read it again."""
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    for path in (EXAMPLES / "realistic").rglob("*"):
        if path.is_file():
            target = bundle_dir / path.relative_to(EXAMPLES / "realistic")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    pool = DecisionWorkers(CedarEngine(load_bundle(bundle_dir)), AUDIENCE, 1)
    try:
        for policy in (bundle_dir / "policies").glob("*.cedar"):
            policy.write_text('permit (principal, action, resource);\n')  # the host's swap
        await pool.start()
        _, verdict = await pool.admit_and_judge(
            _fields("payments.transfer", {"amount": 50_000, "currency": "EUR", "to": "acct-9"}), VIEW)
        assert verdict.reason is Code.POLICY_DENY
    finally:
        pool.close()


async def test_a_refusal_in_a_worker_comes_back_with_its_code(workers: DecisionWorkers) -> None:
    try:
        fields = _fields("crm.lookup_customer", {"customer_id": "c"})
        fields["arguments_digest"] = json_digest({"customer_id": "other"})
        with pytest.raises(RequestError) as refused:
            await workers.admit_and_judge(fields, VIEW)
        assert refused.value.code is Code.ARGS_DIGEST_MISMATCH
    finally:
        workers.close()


async def test_a_dead_worker_refuses_its_request_and_fresh_workers_take_the_next(
        workers: DecisionWorkers) -> None:
    try:
        for pid in list(workers._pool._processes):  # type: ignore[attr-defined]  # the pool's own workers
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RequestError) as refused:
            await workers.admit_and_judge(_fields("crm.lookup_customer", {"customer_id": "c"}), VIEW)
        assert refused.value.code is Code.DECISION_WORKER_FAILED
        _, verdict = await workers.admit_and_judge(_fields("crm.lookup_customer", {"customer_id": "c"}), VIEW)
        assert verdict.reason is None
    finally:
        workers.close()


def test_a_killed_enclave_leaves_no_worker_behind(tmp_path: Path) -> None:
    """SIGKILL the enclave process: its fork server, workers and resource tracker end too, and
    release their semaphores (before the pidfd watch they lived on, one set per killed enclave)."""
    enclave = start_enclave(EXAMPLES / "realistic", tmp_path, timeout=60)
    with grpc.insecure_channel(enclave.address) as channel:  # a large call starts the workers
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        session = stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="a", trail=NO_TRAIL)).session_id
        big = {"patient_id": "p", "note": "x" * 8192}
        stub.Decide(enclave_pb2.DecideRequest(
            session_id=session, call_id="c", principal="a", method="tools/call",
            tool="ehr.read_patient_record", arguments_json=json.dumps(big).encode(),
            arguments_digest=json_digest(big), audience=enclave.audience))
    below = descendants(enclave.process.pid)
    assert len(below) >= 3, below  # resource tracker, fork server, at least one worker
    enclave.process.kill()
    enclave.process.wait()
    deadline = time.monotonic() + 15.0
    while any(_alive(pid) for pid in below):
        assert time.monotonic() < deadline, [pid for pid in below if _alive(pid)]
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"  # a zombie has ended


def test_with_no_writable_temp_dir_the_fork_server_uses_the_runtimes_tmpfs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only root and no /tmp volume (the enclave's pod): /dev/shm, not DECISION_WORKER_FAILED."""
    import tempfile

    from cmcp_enclave.workers import RUNTIME_TMPFS, ensure_temp_dir

    def none_usable() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    assert ensure_temp_dir() == RUNTIME_TMPFS == tempfile.tempdir


def test_a_usable_temp_dir_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tempfile

    from cmcp_enclave.workers import ensure_temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert ensure_temp_dir() == str(tmp_path)
