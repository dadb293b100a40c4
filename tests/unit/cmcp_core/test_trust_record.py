"""Trust Records at CloseSession: agentrust_trace.verify_record accepts them with the enclave
key pinned (also for non-ASCII tool and session names) and rejects tampering or other keys."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
from agentrust_trace import TrustRecord, verify_record
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.crypto import public_bytes, public_jwk
from cmcp_core.digest import b64url, jcs
from cmcp_core.trust_record import (
    GPU_REL,
    LEDGER_REL,
    build_record,
    gpu_evidence_digest,
    record_gpu_digests,
    record_ledger,
    record_report_data,
)
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, exported, known
from tests.paths import EXAMPLES


@pytest.fixture
def closed(tmp_path: Path) -> tuple[Enclave, dict[str, Any]]:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="sitzung-ü-1")
    decide(enc, "résumé.parse", {"body": "Zoë Ñuñez — 日本"}, session="sitzung-ü-1")
    decide(enc, "email.send_external", {"to": ["x@evil.example"]}, session="sitzung-ü-1")  # denied
    return enc, enc.close(known(enc, "sitzung-ü-1")).record


def test_verify_record_accepts_with_pinned_key(closed: tuple[Enclave, dict[str, Any]]) -> None:
    enc, record = closed
    result = verify_record(record, enc.public_key)
    assert result is not None
    assert verify_record(record, public_jwk(enc.public_key)) is not None


def test_record_claims_measured_values(closed: tuple[Enclave, dict[str, Any]]) -> None:
    enc, record = closed
    assert record["policy"]["bundle_hash"] == enc.bundle_hash == enc.entry.bundle_hash
    assert record["policy"]["enforcement_mode"] == "enforce"
    assert record["runtime"]["platform"] == "software-only"
    assert record["appraisal"]["status"] == "none"
    assert record["cnf"]["jwk"] == public_jwk(enc.public_key)
    assert record["tool_transcript"] == {"hash": enc.closed[known(enc, "sitzung-ü-1")].tip, "call_count": 2}
    assert record["data_class"] == "restricted"
    expected = record_report_data(public_bytes(enc.public_key), enc.bundle_hash, enc.catalog_hash,
                                  enc.mode, record["tool_transcript"]["hash"])
    assert record["runtime"]["nonce"] == b64url(expected) and len(expected) == 64


def test_record_survives_jcs_round_trip_with_non_ascii(closed: tuple[Enclave, dict[str, Any]]) -> None:
    import json

    enc, record = closed
    assert verify_record(json.loads(jcs(record)), enc.public_key) is not None
    # the transcript hash covers the non-ASCII tool name as raw UTF-8 (JCS), not \u escapes
    entries = exported(enc, "sitzung-ü-1")
    assert "résumé.parse".encode() in jcs(entries[2])
    assert entries[-1]["hash"] == record["tool_transcript"]["hash"]


def test_other_key_and_tampering_are_rejected(closed: tuple[Enclave, dict[str, Any]]) -> None:
    enc, record = closed
    with pytest.raises((InvalidSignature, ValueError)):
        verify_record(record, Ed25519PrivateKey.generate().public_key())
    for path, value in ((("policy", "bundle_hash"), "sha256:" + "0" * 64),
                        (("tool_transcript", "hash"), "sha256:" + "1" * 64),
                        (("runtime", "platform"), "intel-tdx")):
        forged = copy.deepcopy(record)
        forged[path[0]][path[1]] = value
        with pytest.raises((InvalidSignature, ValueError)):
            verify_record(forged, enc.public_key)


def test_closing_twice_returns_the_same_record(closed: tuple[Enclave, dict[str, Any]]) -> None:
    enc, record = closed
    assert enc.close(known(enc, "sitzung-ü-1")).record == record


def test_record_references_the_ledger_it_was_closed_in(closed: tuple[Enclave, dict[str, Any]]) -> None:
    enc, record = closed
    assert record_ledger(record) == (enc.ledger_id, enc.ledger_seq, enc.ledger_tip)
    ledger = exported(enc, enc.ledger_id)
    assert ledger[-1]["kind"] == "close" and ledger[-1]["hash"] == enc.ledger_tip
    assert ledger[-1]["data"]["tip"] == record["tool_transcript"]["hash"]
    TrustRecord.model_validate(record)  # references is the schema's place for it
    assert record_ledger({**record, "references": []}) is None
    assert record_ledger({**record, "references": [{"rel": LEDGER_REL, "id": "no-count"}]}) is None


def test_gpu_evidence_is_named_by_digest_in_the_schemas_references() -> None:
    """One gpu-attestation pointer per envelope, after the ledger's, with only the schema's fields
    (references has additionalProperties: false): the record signs the digest, not the evidence."""
    key = Ed25519PrivateKey.generate()
    envelopes = [b'{"gpu": 0}', b'{"gpu": 1}']
    record = build_record(key, platform="simulated", initdata_bytes=b"x", initdata_algorithm="sha256",
                          bundle_hash="sha256:" + "a" * 64, catalog_hash="sha256:" + "b" * 64,
                          enforcement_mode="enforce", bundle_version=None, chain_tip="sha256:" + "c" * 64,
                          call_count=0, route="r", session_id="s", data_class="public",
                          ledger=("ledger:k", 2, "sha256:" + "d" * 64), gpu_evidence=envelopes)
    TrustRecord.model_validate(record)
    verify_record(record, key.public_key(), max_age_seconds=None)
    assert [r["rel"] for r in record["references"]] == [LEDGER_REL, GPU_REL, GPU_REL]
    assert [r["id"] for r in record["references"][1:]] == ["gpu-0", "gpu-1"]
    assert record_gpu_digests(record) == tuple(gpu_evidence_digest(e) for e in envelopes)
    assert gpu_evidence_digest(envelopes[0]) == "sha256:" + hashlib.sha256(envelopes[0]).hexdigest()
    assert record_ledger(record) == ("ledger:k", 2, "sha256:" + "d" * 64)  # the ledger still found
    assert record_gpu_digests({}) == () and record_gpu_digests({"references": ["junk"]}) == ()
