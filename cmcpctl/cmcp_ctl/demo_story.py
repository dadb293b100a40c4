"""The demo's story, told the same way on local processes and on a cluster.

``cmcpctl demo`` (:mod:`cmcp_ctl.demo_cmd`, local processes) and ``cmcpctl demo --cluster``
(:mod:`cmcp_ctl.demo_cluster`) deploy the parts differently and then call :func:`tell_story` and
:func:`auditor_commands` here, so both check exactly the same outcomes. It lives in its own
module so that neither launcher imports the other's module for it (no import cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from cmcp_core.crypto import key_from_jwk
from cmcp_core.decision import verify_decision
from cmcp_core.errors import CmcpError
from cmcp_core.evidence.gpu import GPU_EVIDENCE_SUFFIX, gpu_evidence_file
from cmcp_core.verify import AppraisalPolicy, appraise_response, verify_audit_export, verify_trust_record
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_ctl.main import main as cmcpctl_main
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import DevRelease

# --------------------------------------------------------------------------------------------
# Output: tables, a spinner for slow steps, and failures that say what to do next
# --------------------------------------------------------------------------------------------


def _fancy(stream: TextIO) -> bool:
    """Unicode symbols only where the terminal can print them (CI logs may be ASCII)."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8")


class Console:
    """Everything the demo prints goes through here, so tests can capture it in one place."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        fancy = _fancy(self.stream)
        self.ok_mark = "✔" if fancy else "ok"
        self.fail_mark = "✘" if fancy else "FAIL"
        self.frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if fancy else "|/-\\"

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, text: str) -> None:
        self.line()
        self.line(text)
        self.line("─" * len(text) if _fancy(self.stream) else "-" * len(text))

    @contextlib.contextmanager
    def progress(self, what: str) -> Iterator[None]:
        """A spinner on a terminal, a start line elsewhere; then one result line with the time.

        Slow steps (starting processes) must visibly be alive, but a log file must not fill up
        with animation frames: hence the two forms.
        """
        started = time.monotonic()
        stop = threading.Event()
        spinner: threading.Thread | None = None
        if self.tty:

            def spin() -> None:
                for frame in itertools.cycle(self.frames):
                    if stop.wait(0.1):
                        return
                    elapsed = time.monotonic() - started
                    self.stream.write(f"\r  {frame} {what} ({elapsed:.1f}s)")
                    self.stream.flush()

            spinner = threading.Thread(target=spin, daemon=True)
            spinner.start()
        else:
            self.line(f"  ... {what}")
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            if spinner is not None:
                spinner.join()
                self.stream.write("\r\033[K")
            mark = self.ok_mark if ok else self.fail_mark
            self.line(f"  {mark} {what} ({time.monotonic() - started:.1f}s)")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A plain aligned table; cells are single-line (long text is cut with an ellipsis)."""
        cells = [[_cell(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        sep = "  "
        self.line(sep.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        self.line(sep.join(("─" if _fancy(self.stream) else "-") * w for w in widths))
        for row in cells:
            self.line(sep.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: str, limit: int = 52) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DemoFailure(Exception):
    """The deployment could not be brought up; ``hint`` is the next action for the user."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------------------------
# The deployment: the conformance launcher with the demo's bundle, upstream and wiretap
# --------------------------------------------------------------------------------------------

ROUTE = "demo"
AGENT = "demo-agent"
AUDIENCE = "demo-upstream"
# The demo renders initdata as the conformance launcher does (same image, by digest).
DEMO_ENCLAVE_IMAGE = TEST_IMAGE  # by digest: the image the deployment's signed release names
DEMO_PERMIT_TTL = 30  # long enough that the replay step meets the replay check, not expiry


def default_bundle_dir() -> Path:
    """``examples/realistic`` of the source tree this package is installed from (editable)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "realistic"
        if (candidate / "manifest.json").is_file():
            return candidate
    return Path("examples/realistic").resolve()


# --------------------------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One thing the demo does, what must happen, and what did."""

    title: str
    actor: str  # "agent" (through the gateway) or "host" (straight at the upstream)
    tool: str
    arguments: dict[str, Any]
    expect_code: str | None  # None: the call must succeed
    expect_executed: bool
    why: str  # the rule or mechanism that decides this step
    actual_code: str | None = None
    executed: bool | None = None
    detail: str = ""
    error: str = ""
    signed_decision: tuple[bytes, bytes] | None = None  # (document, signature) relayed on a deny

    @property
    def passed(self) -> bool:
        return (
            not self.error and self.actual_code == self.expect_code and self.executed == self.expect_executed
        )


PARTNER = "dr.who@partner.example"
OUTSIDER = "someone@gmail.example"


def agent_steps() -> list[Step]:
    """The agent's session, in order; the taint step only makes sense after the PHI read."""
    mail = {"subject": "Follow-up", "body": "Notes from today's visit attached."}
    return [
        Step(
            "CRM lookup (PII)",
            "agent",
            "crm.lookup_customer",
            {"customer_id": "C-1042"},
            None,
            True,
            "allow-catalogued",
        ),
        Step(
            "tool not in the catalog",
            "agent",
            "crm.export_all_customers",
            {},
            "TOOL_NOT_IN_CATALOG",
            False,
            "measured catalog",
        ),
        Step(
            "mail to non-partner",
            "agent",
            "email.send_external",
            {"to": [OUTSIDER], **mail},
            "POLICY_DENY",
            False,
            "external-mail-partner-only",
        ),
        Step(
            "mail to partner",
            "agent",
            "email.send_external",
            {"to": [PARTNER], **mail},
            None,
            True,
            "allow-catalogued",
        ),
        Step(
            "read patient record (PHI)",
            "agent",
            "ehr.read_patient_record",
            {"patient_id": "P-77"},
            None,
            True,
            "allow-catalogued",
        ),
        Step(
            "partner mail after PHI",
            "agent",
            "email.send_external",
            {"to": [PARTNER], **mail},
            "POLICY_DENY",
            False,
            "no-external-send-after-phi",
        ),
    ]


@dataclass
class Run:
    """Everything one demo run produced, for the summary, the files and the tests."""

    out: Path
    steps: list[Step] = field(default_factory=list)
    session_id: str = ""
    close_status: int | None = None
    record: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    attest_json: str = ""
    nonce_hex: str = ""
    key_jwk: dict[str, Any] = field(default_factory=dict)
    bundle_hash: str = ""
    gpu_evidence: tuple[bytes, ...] = ()  # the record's GPU evidence (an enclave beside GPUs)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, passed, detail)
    files: dict[str, Path] = field(default_factory=dict)
    # --release-manifest/--release-key of the signed release the deployment trusts: the auditor
    # appraises the enclave against the same release as the gateway and guard
    release_argv: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.passed for s in self.steps) and all(c[1] for c in self.checks)


class Counter:
    """The upstream's own execution counter (``GET /calls``, outside the guard; runs no tool)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def snapshot(self) -> dict[str, int]:
        resp = httpx.get(self.url, timeout=10.0)
        resp.raise_for_status()
        return {str(k): int(v) for k, v in (resp.json().get("by_tool") or {}).items()}

    def executed(self, before: dict[str, int], tool: str) -> bool:
        return self.snapshot().get(tool, 0) > before.get(tool, 0)


def _deny_detail(data: dict[str, Any] | None) -> str:
    """Policy ids and reason from the enclave's signed decision the gateway relays on a deny."""
    if not data:
        return ""
    decision = data.get("decision")
    if isinstance(decision, dict) and isinstance(decision.get("document"), str):
        with contextlib.suppress(ValueError):
            doc = json.loads(decision["document"])
            ids = ", ".join(_policy_name(p) for p in doc.get("policy_ids") or [])
            return f"signed deny: {ids}" if ids else f"signed deny: {doc.get('reason_code', '')}"
    return ""


def _result_detail(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        return json.dumps(structured, ensure_ascii=False)
    for part in result.get("content") or []:
        if isinstance(part, dict) and part.get("type") == "text":
            return str(part.get("text", ""))
    return "ok"


async def drive_agent(target: Any, steps: list[Step], counter: Counter) -> str:
    """Run the agent's steps in one MCP session (official SDK client); return the session id."""
    # The mcp SDK client is imported when the story is told, not at start-up: every cmcpctl
    # command imports this module (through ``demo``'s registration) and would pay for it.
    from cmcp_conformance.agent import agent

    async with agent(target) as session:
        for step in steps:
            before = await asyncio.to_thread(counter.snapshot)
            outcome = await session.call(step.tool, step.arguments)
            step.executed = await asyncio.to_thread(counter.executed, before, step.tool)
            if outcome.ok:
                step.detail = _result_detail(outcome.result)
                if outcome.result and outcome.result.get("isError"):
                    step.actual_code = "TOOL_ERROR"
            else:
                step.actual_code = outcome.error_code or f"JSON-RPC {outcome.code}"
                step.detail = _deny_detail(outcome.data) or outcome.message
                with contextlib.suppress(AssertionError, KeyError, ValueError):
                    step.signed_decision = outcome.signed_decision()
        return str(session.session_id)


def host_steps(
    upstream_url: str, tap_base: str, counter: Counter, denied: tuple[int, Step], replay_of: tuple[int, Step]
) -> list[Step]:
    """The host bypasses the gateway: the denied call with no permit, then a copied permit again."""
    from cmcp_conformance.agent import DirectUpstream  # the mcp SDK client: see drive_agent

    (denied_no, denied_step), (replay_no, replay_step) = denied, replay_of
    no_permit = Step(
        f"step {denied_no} sent directly",
        "host",
        denied_step.tool,
        dict(denied_step.arguments),
        "PERMIT_MISSING",
        False,
        "upstream guard",
    )
    replay = Step(
        f"step {replay_no}'s permit replayed",
        "host",
        replay_step.tool,
        dict(replay_step.arguments),
        "PERMIT_REPLAYED",
        False,
        "guard single-use nonce",
    )
    replay_of_step = replay_step

    direct = DirectUpstream(upstream_url, client_name="compromised-host")

    captured = httpx.get(f"{tap_base}/_tap/permits", timeout=10.0).json()
    token = next(
        (
            c["permit"]
            for c in reversed(captured)
            if c["tool"] == replay_of_step.tool and c["arguments"] == replay_of_step.arguments
        ),
        None,
    )
    for step, permit in ((no_permit, None), (replay, token)):
        if step is replay and not token:
            step.error = "the wiretap captured no permit for that call, so there was nothing to replay"
            continue
        before = counter.snapshot()
        outcome = direct.call(step.tool, step.arguments, permit)
        step.executed = counter.executed(before, step.tool)
        step.actual_code = None if outcome.ok else (outcome.error_code or f"JSON-RPC {outcome.code}")
        step.detail = outcome.message if not outcome.ok else _result_detail(outcome.result)
    return [no_permit, replay]


# --------------------------------------------------------------------------------------------
# Verification: the library, then the user-visible commands
# --------------------------------------------------------------------------------------------


def _run_cmcpctl(argv: list[str]) -> tuple[int, str]:
    """Run a ``cmcpctl`` command in-process (same code path as the console script)."""

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cmcpctl_main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, (out.getvalue() + err.getvalue()).strip()


def verify_commands(run: Run) -> list[list[str]]:
    """The commands an auditor runs on the files the demo wrote (printed and executed)."""
    files = run.files
    return [
        [
            "verify",
            "record",
            str(files["record"]),
            "--response",
            str(files["attest"]),
            "--nonce",
            run.nonce_hex,
            "--allow-simulated",
            "--bundle-hash",
            run.bundle_hash,
            "--audit",
            str(files["audit"]),
            *(["--gpu-evidence", str(files["gpu"]), "--require-gpu", str(len(run.gpu_evidence))]
              if "gpu" in files else []),
            *run.release_argv,
        ],
        [
            "verify",
            "audit",
            str(files["audit"]),
            "--key",
            f"@{files['key']}",
            "--tip",
            str(run.record.get("tool_transcript", {}).get("hash", "")),
        ],
    ]


def verify_run(run: Run, attest_response: Any, nonce: bytes, policy: AppraisalPolicy) -> None:
    """Appraise the evidence (against ``policy``'s signed releases) and verify record and chain
    with the library; record each check."""

    gpu = GpuRequirement(count=len(run.gpu_evidence)) if run.gpu_evidence else None
    evidence = appraise_response(attest_response, nonce, policy, expected_bundle_hash=run.bundle_hash,
                                 gpu=gpu)
    run.checks.append(
        (
            "evidence appraised: release, binding + initdata",
            evidence.passed,
            f"{evidence.code} [{evidence.platform}, {evidence.assurance}]",
        )
    )
    record = verify_trust_record(
        run.record, verdict=evidence, pinned_bundle_hash=run.bundle_hash, audit_entries=run.entries,
        gpu_evidence=run.gpu_evidence if gpu else None, gpu=gpu, allow_simulated=policy.allow_simulated,
    )
    run.checks.append(
        ("Trust Record: key from evidence, bundle pinned", record.passed, f"{record.code}: {record.message}")
    )
    if gpu:
        run.checks.append(("the record's GPU evidence: named by it, answers its nonce",
                           record.passed and len(record.gpus) == len(run.gpu_evidence),
                           f"{len(record.gpus)} GPU(s), {record.code}"))
    # Denies reach the agent through the untrusted gateway, so they carry the enclave's signed
    # decision: check each against the key the evidence bound (not a key the gateway named).

    denied = [s for s in run.steps if s.actor == "agent" and s.expect_code is not None]
    good = 0
    if evidence.passed and evidence.public_key_jwk:
        key = key_from_jwk(dict(evidence.public_key_jwk))
        for step in denied:
            if step.signed_decision is None:
                continue
            with contextlib.suppress(CmcpError):
                doc = verify_decision(*step.signed_decision, key, expected={"tool": step.tool})
                good += doc["effective"] == "deny"
    run.checks.append(
        (
            "every deny signed by the attested key",
            good == len(denied),
            f"{good} of {len(denied)} denies verified",
        )
    )
    tip = str(run.record.get("tool_transcript", {}).get("hash", ""))
    chain = verify_audit_export(run.entries, run.key_jwk, expected_tip=tip)
    run.checks.append(
        ("audit chain verifies, tip = record's hash", chain.passed, f"{chain.code}: {chain.message}")
    )
    # The chain must tell the same story the agent saw: one signed decision per call, in order,
    # with the same effect, and an upstream outcome ("complete") only for the calls that ran.
    seen = [
        (_entry_tool(e), str(e["data"].get("effective")))
        for e in run.entries
        if e.get("kind") == "decision"
        and isinstance(e.get("data"), dict)
        and e["data"].get("method") == "tools/call"
    ]
    agent_calls = [s for s in run.steps if s.actor == "agent"]
    told = [(s.tool, "allow" if s.expect_code is None else "deny") for s in agent_calls]
    run.checks.append(
        (
            "audit: one decision per call, same effect",
            seen == told,
            f"{len(seen)} decisions for {len(agent_calls)} calls"
            + ("" if seen == told else f"; chain says {seen}"),
        )
    )
    completes = [_entry_tool(e) for e in run.entries if e.get("kind") == "complete"]
    ran = [s.tool for s in agent_calls if s.executed]
    run.checks.append(
        (
            "audit: an outcome for each call that ran",
            completes == ran,
            f"{len(completes)} outcomes for {len(ran)} executed calls",
        )
    )


def _entry_tool(entry: dict[str, Any]) -> str:
    """The tool an audit entry is about (decision and complete entries name it in ``data``)."""
    data = entry.get("data")
    return str(data.get("tool") or "") if isinstance(data, dict) else ""


def _entry_outcome(entry: dict[str, Any]) -> str:
    """A short reading of an entry: the decision and the policies behind it, or the outcome."""
    data = entry.get("data")
    if not isinstance(data, dict):
        return ""
    if entry.get("kind") == "decision":
        ids = ",".join(_policy_name(p) for p in data.get("policy_ids") or [])
        return " ".join(str(x) for x in (data.get("effective"), data.get("reason_code") or "", ids) if x)
    if entry.get("kind") == "complete":
        return f"upstream answered, {data.get('response_bytes', '?')} bytes" + (
            f", {data['error_code']}" if data.get("error_code") else ""
        )
    return ", ".join(f"{k}={v}" for k, v in data.items() if isinstance(v, str | int))[:60]


def _policy_name(policy_id: str) -> str:
    """``policies/taint.cedar#no-external-send-after-phi`` -> ``no-external-send-after-phi``."""
    return policy_id.rsplit("#", 1)[-1]


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def prepare_out(out_arg: str | None) -> Path:
    """The output folder: ``--out`` (created; our previous files in it are replaced) or a new one."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(out_arg) if out_arg else Path(f"cmcp-demo-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    for old in itertools.chain(out.glob("*.trust-record.json"), out.glob("*.audit.json"),
                               out.glob(f"*{GPU_EVIDENCE_SUFFIX}")):
        old.unlink()
    shutil.rmtree(out / "run", ignore_errors=True)
    (out / "run").mkdir()
    return out.resolve()


RELEASE_FILES = ("enclave-release.json", "enclave-release.pub.pem")


def publish_release(out: Path, release: DevRelease) -> list[str]:
    """Copy the deployment's signed release manifest and key next to the evidence (the auditor
    appraises against the same release as the gateway and guard); their ``cmcpctl verify`` flags."""
    manifest, key = (out / name for name in RELEASE_FILES)
    shutil.copyfile(release.manifest, manifest)
    shutil.copyfile(release.key, key)
    return ["--release-manifest", str(manifest), "--release-key", str(key)]


def _rel(path: Path) -> str:
    """Paths relative to the working directory when possible: shorter, copy-pasteable commands."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# The story on any deployment: shared by run_local and `--cluster` (cmcp_ctl.demo_cluster)


def tell_story(console: Console, run: Run, target: Any, upstream_url: str, tap_base: str) -> None:
    """Sections 2 and 3: the agent session, the host's two direct attempts, then the evidence.

    Why a function of its own: the local launcher and ``cmcpctl demo --cluster`` must tell exactly
    the same story and check exactly the same outcomes; only how the parts are deployed differs.
    ``target`` is a :class:`cmcp_conformance.target.TargetDeployment` (gateway route, agent token, enclave
    address, upstream counter); ``upstream_url`` is the guarded upstream the host calls directly and
    ``tap_base`` the wiretap whose captured permits it replays. Files go to ``run.out``.
    """
    from google.protobuf import json_format  # protobuf: at run time only (see drive_agent)


    console.heading("2. One agent session through the gateway (official mcp client), then the host")
    counter = Counter(str(target.upstream_counter_url))
    steps = agent_steps()
    with console.progress(f"agent session: {len(steps)} tools/call"):
        run.session_id = asyncio.run(drive_agent(target, steps, counter))
    # the host's two attempts: the exfiltration the taint rule just denied, sent straight to
    # the upstream, and the PHI read's genuine permit (copied off the wire) used a second time
    denied = next((i, s) for i, s in enumerate(steps, 1) if s.why == "no-external-send-after-phi")
    replay_of = next((i, s) for i, s in enumerate(steps, 1) if s.tool == "ehr.read_patient_record")
    with console.progress("host bypasses the gateway: 2 direct calls to the upstream"):
        steps += host_steps(upstream_url, tap_base, counter, denied, replay_of)
    run.steps = steps
    _print_steps(console, steps)

    console.heading("3. Close the session, collect and verify the evidence")
    with console.progress("DELETE the MCP session at the gateway (enclave closes it)"):
        run.close_status = httpx.delete(
            target.mcp_url,
            headers={**target.auth_headers(), "mcp-session-id": run.session_id},
            timeout=10.0,
        ).status_code
    run.checks.append(("session closed (HTTP DELETE)", run.close_status == 200, f"HTTP {run.close_status}"))
    with console.progress("Trust Record, audit export and fresh evidence from the enclave"):
        closed = target.close_session_response(run.session_id)  # idempotent: the stored record
        run.record = json.loads(closed.trust_record_json)
        run.gpu_evidence = tuple(bytes(e) for e in closed.gpu_evidence)
        run.entries = target.export_audit(run.session_id)
        nonce = secrets.token_bytes(32)
        response = target.attest(nonce)
        run.nonce_hex = nonce.hex()
        run.attest_json = json_format.MessageToJson(response)
        run.key_jwk = json.loads(response.public_key_jwk)
    stem = run.session_id
    run.files = {
        "record": _write_json(run.out / f"{stem}.trust-record.json", run.record),
        "audit": _write_json(run.out / f"{stem}.audit.json", run.entries),
        "attest": run.out / "enclave.attest.json",
        "key": _write_json(run.out / "enclave-key.jwk.json", run.key_jwk),
    }
    run.files["attest"].write_text(run.attest_json + "\n", encoding="utf-8")
    if run.gpu_evidence:  # the file a gateway writes beside the record (trust_record_dir)
        run.files["gpu"] = run.out / f"{stem}{GPU_EVIDENCE_SUFFIX}"
        run.files["gpu"].write_bytes(gpu_evidence_file(run.gpu_evidence))
    run.files["nonce"] = run.out / "enclave.nonce.hex"  # the nonce that AttestResponse answers
    run.files["nonce"].write_text(run.nonce_hex + "\n", encoding="utf-8")
    with console.progress("verifying with the verifier library"):
        verify_run(run, response, nonce, replace(target.appraisal, allow_simulated=target.allow_simulated))
    _print_audit(console, run.entries)


def auditor_commands(console: Console, run: Run) -> None:
    """Section 4: run the printed ``cmcpctl verify`` commands on the files written; the checks table."""
    console.heading("4. The auditor's commands (run now on the files written)")
    for argv in verify_commands(run):
        shown = "cmcpctl " + " ".join(_quote(_shown(a)) for a in argv)
        code, output = _run_cmcpctl(argv)
        console.line(f"$ {shown}")
        for text in output.splitlines()[:5]:
            console.line(f"  {text}")
        run.checks.append((f"cmcpctl {argv[0]} {argv[1]} exits 0", code == 0, f"exit {code}"))
    console.line()
    console.table(
        ["check", "result", "detail"],
        [[name, console.ok_mark if ok else console.fail_mark, detail] for name, ok, detail in run.checks],
    )


def _shown(arg: str) -> str:
    """A command argument as printed: file paths (also ``@file``) relative to the cwd."""
    prefix, path = ("@", arg[1:]) if arg.startswith("@") else ("", arg)
    return prefix + _rel(Path(path)) if Path(path).is_absolute() else arg


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./:@=+" for c in arg) else json.dumps(arg)


def _print_steps(console: Console, steps: Sequence[Step]) -> None:
    def expected(s: Step) -> str:
        return s.expect_code or "allowed"

    def actual(s: Step) -> str:
        return "not run" if s.error else (s.actual_code or "allowed")

    rows = []
    for i, s in enumerate(steps, 1):
        ran = "—" if s.executed is None else ("yes" if s.executed else "no")
        rows.append(
            [
                str(i),
                s.actor,
                s.title,
                s.tool,
                expected(s),
                actual(s),
                ran,
                console.ok_mark if s.passed else console.fail_mark,
                s.error or s.detail or s.why,
            ]
        )
    console.line()
    console.table(["#", "who", "step", "tool", "expected", "actual", "ran", "", "detail"], rows)
    console.line("  ran = the upstream executed the tool (its own call counter, read outside the guard)")


def _print_audit(console: Console, entries: Sequence[dict[str, Any]]) -> None:
    console.line()
    console.line(f"  audit chain: {len(entries)} entries, each hash-chained to the one before")
    rows = [
        [
            str(e.get("seq", "")),
            str(e.get("kind", "")),
            _entry_tool(e),
            _entry_outcome(e),
            str(e.get("hash", ""))[:19] + "…",
        ]
        for e in entries
    ]
    console.table(["seq", "kind", "tool", "what", "hash"], rows)


def _explain_failures(console: Console, run: Run) -> None:
    console.line()
    console.line(f"{console.fail_mark} Some expected outcomes did not happen:")
    logs = _rel(run.out / "run")
    for s in run.steps:
        if s.passed:
            continue
        got = s.error or f"{s.actual_code or 'allowed'}, upstream ran: {s.executed}"
        console.line(
            f"  - step '{s.title}': expected {s.expect_code or 'allowed'} "
            f"(upstream ran: {s.expect_executed}), got {got}."
        )
        if s.actor == "agent":
            console.line(
                f"    next: check {logs}/gateway.log and the enclave log in {logs}/; "
                f"re-check the rule with `cmcpctl bundle validate examples/realistic`."
            )
        else:
            console.line(
                f"    next: check {logs}/guard.log; the guard must attest the enclave "
                "before it trusts its permits."
            )
    for name, ok, detail in run.checks:
        if not ok:
            console.line(f"  - {name}: {detail}")
            console.line(
                f"    next: re-run the printed `cmcpctl verify` command with --json for the failing check, "
                f"and see {logs}/ for component logs."
            )


def report_stop(console: Console, message: str, hint: str, *, exit_code: int = 1) -> int:
    """The demo could not finish: say what stopped it and the next action; return the exit code."""
    console.line()
    console.line(f"{console.fail_mark} {message}")
    console.line(f"  next: {hint}")
    return exit_code


def report_success(console: Console, run: Run, elapsed: float, where: str = "") -> bool:
    """Print the closing summary when every step and check passed; False (nothing printed
    beyond a blank line) otherwise, so the caller explains the failures its own way."""
    console.line()
    if not run.passed:
        return False
    console.line(
        f"{console.ok_mark} All {len(run.steps)} steps and {len(run.checks)} checks came out as expected "
        f"{where}({elapsed:.0f}s)."
    )
    console.line(f"  Trust Record: {_rel(run.files['record'])}")
    console.line(f"  Audit export: {_rel(run.files['audit'])}")
    if "gpu" in run.files:
        console.line(f"  GPU evidence: {_rel(run.files['gpu'])} (named by the record)")
    console.line("  Verify them again any time with the commands in section 4 (docs/verification.md).")
    return True


