"""Each console script stops gracefully on SIGTERM as PID 1, as it runs in a container.

A container's process is its PID namespace's init, and the kernel drops a signal to an init that
has no handler for it: a script that relied on SIGTERM's default would run on until the kubelet's
SIGKILL, closing nothing. Each script here runs as PID 1 of its own namespace (``unshare``,
tests/helpers/pid1.py) and is sent SIGTERM from outside, as the runtime sends it; it must exit 0
within a bound. The enclave must also open no new session, close the open ones (close entry and
Trust Record) and keep serving until the gateway took those entries. A process that leaves SIGTERM
at its default (the weakened variant) is shown to fail the same bounded wait.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
from agentrust_trace import verify_record

from cmcp_core.audit import verify_chain
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import NO_TRAIL, EnclaveProcess, start_enclave
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import write_dev_release
from tests.helpers.gateway_stack import AUDIENCE
from tests.helpers.pid1 import PID1_LAUNCHER, Pid1Process, init_of, needs_pid_namespaces, start_as_pid1
from tests.paths import EXAMPLES, ROOT

pytestmark = needs_pid_namespaces

BOUND = 30.0  # the chart's terminationGracePeriodSeconds: the kubelet's SIGKILL comes after it
BIN = Path(sys.executable).parent


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_script_without_a_sigterm_handler_is_not_stopped_as_pid1(tmp_path: Path) -> None:
    """The weakened variant: SIGTERM at its default. As an ordinary process it dies of it; as PID 1
    the kernel drops it and the bounded wait catches the process still running."""
    ignores = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
    proc = start_as_pid1(ignores, log=tmp_path / "weak.log")
    assert proc.stop(within=3.0) is None  # still running: the wait ran out, SIGKILL ended it


@pytest.fixture
def pid1_enclave(tmp_path: Path) -> EnclaveProcess:
    proc = start_enclave(EXAMPLES / "realistic", tmp_path, launcher=PID1_LAUNCHER,
                         extra_args=["--shutdown-grace", str(BOUND - 5)])
    yield proc  # type: ignore[misc]
    proc.stop()


def test_the_enclave_as_pid1_closes_its_sessions_hands_over_their_records_and_exits_0(
    pid1_enclave: EnclaveProcess,
) -> None:
    assert pid1_enclave.ready["pid"] == 1  # it is the namespace's init
    init = init_of(pid1_enclave.process.pid)
    with grpc.insecure_channel(pid1_enclave.address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        opened = stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent://billing", trail=NO_TRAIL))
        carried = list(opened.audit_entries)
        os.kill(init, 15)  # SIGTERM, from outside the namespace, as the runtime sends it
        for _ in range(600):  # the stop is under way once a new session is refused
            try:
                stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent://billing"), timeout=5)
            except grpc.RpcError as exc:
                if "TEE_UNAVAILABLE" in (exc.details() or ""):
                    break
            else:
                raise AssertionError("a stopping enclave opened a new session")
        else:
            raise AssertionError("the enclave never began to stop")
        # the gateway's CloseSession still gets the record; its answer carries the close entries
        closed = stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id=opened.session_id))
    carried += closed.audit_entries
    record = json.loads(closed.trust_record_json)
    assert verify_record(record, pid1_enclave.public_key) is not None
    entries = [e for e in map(json.loads, carried) if e.get("session_id") == opened.session_id]
    assert entries[-1]["kind"] == "close" and entries[-1]["data"]["reason"] == "shutdown", entries[-1]
    assert verify_chain(entries, pid1_enclave.public_key, expected_tip=record["tool_transcript"]["hash"]).ok
    assert pid1_enclave.process.wait(timeout=BOUND) == 0  # the outbox is empty: it stops at once
    (stopped,) = [e for e in _json_lines(pid1_enclave.stderr_text()) if e.get("event") == "stopped"]
    assert stopped["sessions_closed"] == 1 and stopped["audit_entries_undelivered"] == 0


def test_the_enclave_counts_entries_nobody_took_and_still_stops_within_its_grace(tmp_path: Path) -> None:
    enclave = start_enclave(EXAMPLES / "realistic", tmp_path, launcher=PID1_LAUNCHER,
                            extra_args=["--shutdown-grace", "1"])
    try:
        with grpc.insecure_channel(enclave.address) as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent://billing", trail=NO_TRAIL))
        os.kill(init_of(enclave.process.pid), 15)
        assert enclave.process.wait(timeout=BOUND) == 0
    finally:
        enclave.stop()
    (stopped,) = [e for e in _json_lines(enclave.stderr_text()) if e.get("event") == "stopped"]
    assert stopped["sessions_closed"] == 1
    assert stopped["audit_entries_undelivered"] == 2  # the close entry and the ledger's: said, not hidden
    assert stopped["level"] == "WARNING"


def _wait_listening(port: int, log: Path) -> None:
    for _ in range(1200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()[-3000:]}")


def _wait_logged(needle: str, log: Path) -> None:
    for _ in range(1200):
        if needle in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"never logged {needle!r}:\n{log.read_text()[-3000:]}")


def _answered_after_sigterm(proc: Pid1Process, port: int, path: str, headers: dict[str, str]) -> str:
    """Half a request is in flight when SIGTERM arrives; the server stops accepting (a new
    connection is refused), and the rest of the request still gets its answer before it exits 0."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "email.send_external", "arguments": {}}}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Connection": "close",
        "Accept": "application/json, text/event-stream", "Content-Length": str(len(body)), **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body[:10])
        os.kill(proc.host_pid, signal.SIGTERM)
        for _ in range(1200):  # the stop has begun once the listener is closed
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the server kept accepting after SIGTERM")
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert proc.launcher.wait(timeout=BOUND) == 0
    return answer.decode(errors="replace")


def test_the_gateway_as_pid1_answers_what_is_in_flight_and_stops_on_sigterm(
    tmp_path: Path, enclave: EnclaveProcess
) -> None:
    port = free_port()
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({
        "listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state"), "allow_simulated": True,
        "release": write_dev_release(tmp_path).config(),
        "routes": [{"name": "demo", "upstream": "http://127.0.0.1:9/mcp", "audience": AUDIENCE,
                    "enclaves": [enclave.address], "expected_bundle_hashes": [enclave.bundle_hash]}]}))
    log = tmp_path / "gw.log"
    gateway = start_as_pid1([str(BIN / "cmcp-gateway"), "--config", str(config)], log=log, cwd=ROOT)
    _wait_listening(port, log)
    answer = _answered_after_sigterm(gateway, port, "/mcp/demo", {"MCP-Protocol-Version": "2025-06-18"})
    assert answer.startswith("HTTP/1.1 ") and '"jsonrpc"' in answer, answer


def test_the_guard_as_pid1_answers_what_is_in_flight_and_stops_on_sigterm(
    tmp_path: Path, enclave: EnclaveProcess
) -> None:
    port = free_port()
    log = tmp_path / "guard.log"
    guard = start_as_pid1([str(BIN / "cmcp-guard"), "--listen", f"127.0.0.1:{port}",
                           "--upstream", "http://127.0.0.1:9", "--audience", AUDIENCE,
                           "--enclave", enclave.address, "--expected-bundle-hash", enclave.bundle_hash,
                           "--allow-simulated", *write_dev_release(tmp_path).argv()], log=log, cwd=ROOT)
    _wait_listening(port, log)
    answer = _answered_after_sigterm(guard, port, "/mcp", {
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "email.send_external"})
    assert answer.startswith("HTTP/1.1 403 ") and "PERMIT_MISSING" in answer, answer


def _operator_argv(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The operator against an apiserver that is away (a closed port): Kopf starts, retries its API
    discovery, and must still stop at once on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    argv = [str(BIN / "cmcp-operator"), "--namespace", "default", "--enclave-image",
            "registry.example/cmcp-enclave@sha256:" + "a" * 64, *write_dev_release(tmp_path).argv()]
    return argv, {**os.environ, "KUBECONFIG": str(kubeconfig)}


def test_the_operator_as_pid1_stops_kopf_on_sigterm(tmp_path: Path) -> None:
    argv, env = _operator_argv(tmp_path)
    log = tmp_path / "operator.log"
    operator = start_as_pid1(argv, log=log, env=env)
    _wait_logged("Initial authentication has finished", log)  # Kopf is running, its handlers in place
    assert operator.stop(within=BOUND) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Signal SIGTERM is received. Operator is stopping." in text
    assert "Activity 'register.<locals>.cleanup' succeeded" in text  # its cleanup handler ran

