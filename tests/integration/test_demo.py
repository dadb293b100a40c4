"""``cmcpctl demo`` end to end: the exit code is 0 only if every expected outcome happened.

The demo is run as a subprocess, exactly as ``make demo`` runs it, so the console script, the
process launcher and the files on disk are all the real ones. A second run on a weakened bundle
(the taint rule removed) must exit 1 and say which step went wrong and what to do next.
Argument handling and the step rule, which start no process, are unit tests:
``tests/unit/cmcp_ctl/test_demo_cmd.py`` and ``test_demo_story.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmcp_ctl.main import main as cmcpctl_main
from tests.paths import ROOT

REPO = ROOT
CMCPCTL = Path(sys.executable).with_name("cmcpctl")


def _run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CMCPCTL), "demo", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    return _run_demo(out), out


def test_demo_exits_zero_and_tells_the_story(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = demo
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    text = proc.stdout
    # each step's row: expected == actual, and whether the upstream ran
    expected_rows = [
        ("crm.lookup_customer", "allowed", "yes"),
        ("crm.export_all_customers", "TOOL_NOT_IN_CATALOG", "no"),
        ("email.send_external", "POLICY_DENY", "no"),
        ("ehr.read_patient_record", "allowed", "yes"),
        ("email.send_external", "PERMIT_MISSING", "no"),
        ("ehr.read_patient_record", "PERMIT_REPLAYED", "no"),
    ]
    rows = [line.split() for line in text.splitlines() if re.match(r"^\d+\s+(agent|host)\s", line)]
    assert len(rows) == 8, text
    # columns: #, who, step title..., tool, expected, actual, upstream ran, mark, detail...
    parsed: list[tuple[str, ...]] = []
    for r in rows:
        i = next(i for i, tok in enumerate(r) if i >= 2 and "." in tok and tok.split(".")[0].isalpha())
        parsed.append(tuple(r[i : i + 4]))
    for tool, code, ran in expected_rows:
        assert (tool, code, code, ran) in parsed, (
            f"no row where {tool} was expected and came out {code} (upstream ran: {ran}):\n{text}"
        )
    assert "external-mail-partner-only" in text
    assert "no-external-send-after-phi" in text
    assert "All 8 steps" in text
    assert "$ cmcpctl verify record" in text and "$ cmcpctl verify audit" in text
    assert text.count("PASS OK") == 2


def test_demo_writes_verifiable_files(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = demo
    assert proc.returncode == 0
    records = list(out.glob("*.trust-record.json"))
    audits = list(out.glob("*.audit.json"))
    assert len(records) == 1 and len(audits) == 1
    assert records[0].name.removesuffix(".trust-record.json") == audits[0].name.removesuffix(".audit.json")
    record = json.loads(records[0].read_text(encoding="utf-8"))
    assert record["runtime"]["platform"] == "software-only"
    assert record["policy"]["bundle_hash"] == _bundle_hash(REPO / "examples" / "realistic")
    entries = json.loads(audits[0].read_text(encoding="utf-8"))
    assert entries[-1]["hash"] == record["tool_transcript"]["hash"]
    # the auditor's command, run independently of the demo process
    key = out / "enclave-key.jwk.json"
    code = cmcpctl_main(
        ["verify", "audit", str(audits[0]), "--key", f"@{key}", "--tip", record["tool_transcript"]["hash"]]
    )
    assert code == 0
    # an edited record no longer verifies with the same command
    tampered = out / "tampered.json"
    record["policy"]["bundle_hash"] = "sha256:" + "0" * 64
    tampered.write_text(json.dumps(record), encoding="utf-8")
    assert cmcpctl_main(["verify", "record", str(tampered), "--key", f"@{key}"]) == 1


def _bundle_hash(path: Path) -> str:
    from cmcp_core.bundle import load_bundle

    return load_bundle(path).bundle_hash


def test_demo_fails_when_an_expected_outcome_does_not_happen(tmp_path: Path) -> None:
    """Drop the taint rule: the partner mail after the PHI read now goes out, so exit 1."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "examples" / "realistic", bundle)
    (bundle / "policies" / "taint.cedar").unlink()
    proc = _run_demo(tmp_path / "out", "--bundle", str(bundle))
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "Some expected outcomes did not happen" in proc.stdout
    assert "partner mail after PHI" in proc.stdout and "next:" in proc.stdout
