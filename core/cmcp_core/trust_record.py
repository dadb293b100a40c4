"""TRACE v0.2 Trust Records as the enclave emits them at session close.

Built and signed with ``agentrust-trace`` (Ed25519 over JCS), so its ``verify_record`` with the
enclave key pinned accepts them. Field choices (see docs/policy-authoring.md):

* ``policy.bundle_hash`` / ``enforcement_mode``: the values measured at load;
* ``runtime.platform``: ``intel-tdx`` / ``amd-sev-snp``, or ``software-only`` for the simulated
  TEE; ``runtime.measurement``: the initdata digest the hardware holds, named by its algorithm
  (sha256/sha384), else ``sha384`` of the initdata bytes;
* ``runtime.nonce``: base64url of the 64-byte REPORT_DATA
  ``Binding(key, bundle_hash, catalog_hash, mode, nonce=SHA-256(chain tip)).report_data()``, so a
  verifier holding the attested key and hashes recomputes it from the record alone
  (:func:`record_report_data`);
* ``tool_transcript.hash``: the audit chain tip, ``call_count``: allowed tool calls;
* ``cnf.jwk``: the enclave key; ``appraisal.status``: ``none`` (self-issued);
* ``references``: one ``rel`` ``cmcp-session-ledger`` entry naming the enclave's ledger chain
  (``id`` ``ledger:<kid>#<count>``, ``digest`` the ledger tip right after this session's close),
  so a verifier holding the store checks that the ledger it reads is the one the record commits
  to, and that no session is withheld or forked (``cmcpctl audit verify``); beside GPUs, one
  ``rel`` ``gpu-attestation`` entry per GPU (``id`` ``gpu-<index>``, ``digest`` SHA-256 of the
  ``cmcp-gpu-evidence-v1`` envelope bytes), whose GPU report answers
  ``binding.gpu_nonce(REPORT_DATA)`` of this record: TRACE has no evidence slot, so the record
  signs a pointer and the nonce binds the evidence to the record (ADR 0031).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from agentrust_trace import TRACE_PROFILE_V0_2, TrustRecord, sign_record, validate_json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes
from cmcp_core.digest import b64url, tagged_sha256

PLATFORMS = {"tdx": "intel-tdx", "snp": "amd-sev-snp", "simulated": "software-only",
             "simulated-snp": "software-only",
             "coco-aa": "intel-tdx"}
SUBJECT_DOMAIN = "cmcp.local"
SELF_VERIFIER = "urn:cmcp:self-issued"  # appraisal.verifier must be a URI
LEDGER_REL = "cmcp-session-ledger"
LEDGER_RESOLVER = "urn:cmcp:audit-store"  # the party that keeps the ledger: the deployment's audit store
GPU_REL = "gpu-attestation"
# Who hands the GPU evidence over: the gateway writes it beside the record (trust_record_dir)
GPU_RESOLVER = "urn:cmcp:trust-record-store"


def record_nonce(chain_tip: str) -> bytes:
    """The binding nonce a record uses: SHA-256 of the chain tip text (recomputable)."""
    return hashlib.sha256(chain_tip.encode("ascii")).digest()


def record_report_data(public_key: bytes, bundle_hash: str, catalog_hash: str, mode: str,
                       chain_tip: str) -> bytes:
    return Binding(public_key, bundle_hash, catalog_hash, mode, record_nonce(chain_tip)).report_data()


def runtime_measurement(initdata_bytes: bytes, algorithm: str) -> str:
    if algorithm in ("sha256", "sha384"):
        return f"{algorithm}:" + hashlib.new(algorithm, initdata_bytes).hexdigest()
    return "sha384:" + hashlib.sha384(initdata_bytes).hexdigest()


def ledger_reference(ledger_id: str, count: int, tip: str) -> dict[str, str]:
    return {"rel": LEDGER_REL, "id": f"{ledger_id}#{count}", "resolver": LEDGER_RESOLVER, "digest": tip}


def record_ledger(record: dict[str, Any]) -> tuple[str, int, str] | None:
    """``(ledger chain id, entry count, tip)`` a record commits to, or ``None`` if it names none."""
    for ref in record.get("references") or ():
        if isinstance(ref, dict) and ref.get("rel") == LEDGER_REL:
            chain, _, count = str(ref.get("id", "")).rpartition("#")
            if chain and count.isdigit():
                return chain, int(count), str(ref.get("digest", ""))
    return None


def gpu_evidence_digest(envelope: bytes) -> str:
    """``sha256:<hex>`` of one GPU envelope, as carried (the bytes, not a re-encoding)."""
    return tagged_sha256(bytes(envelope))


def gpu_reference(index: int, envelope: bytes) -> dict[str, str]:
    return {"rel": GPU_REL, "id": f"gpu-{index}", "resolver": GPU_RESOLVER,
            "digest": gpu_evidence_digest(envelope)}


def record_gpu_digests(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The GPU envelope digests a record names, in its order (empty for a record without GPUs)."""
    return tuple(str(ref.get("digest", "")) for ref in record.get("references") or ()
                 if isinstance(ref, dict) and ref.get("rel") == GPU_REL)


def subject_for(route: str, session_id: str) -> str:
    return f"spiffe://{SUBJECT_DOMAIN}/route/{quote(route, safe='')}/session/{quote(session_id, safe='')}"


def build_record(key: Ed25519PrivateKey, *, platform: str, initdata_bytes: bytes,
                 initdata_algorithm: str, bundle_hash: str, catalog_hash: str,
                 enforcement_mode: str, bundle_version: str | None, chain_tip: str,
                 call_count: int, route: str, session_id: str, data_class: str,
                 ledger: tuple[str, int, str] | None = None, iat: int | None = None,
                 gpu_evidence: Sequence[bytes] = ()) -> dict[str, Any]:
    """Assemble, schema-check and sign one record; returns the signed JSON object.

    ``gpu_evidence``: the envelopes collected for ``gpu_nonce`` of this record's REPORT_DATA
    (:func:`record_report_data`); each is named by digest in ``references``."""

    report_data = record_report_data(public_bytes(key.public_key()), bundle_hash, catalog_hash,
                                     enforcement_mode, chain_tip)
    policy: dict[str, Any] = {"bundle_hash": bundle_hash, "enforcement_mode": enforcement_mode}
    if bundle_version:
        policy["version"] = bundle_version
    record: dict[str, Any] = {
        "eat_profile": TRACE_PROFILE_V0_2,
        "iat": iat if iat is not None else int(time.time()),
        "subject": subject_for(route, session_id),
        "model": {"provider": "unknown", "model_id": "unknown"},
        "runtime": {
            "platform": PLATFORMS.get(platform, "software-only"),
            "measurement": runtime_measurement(initdata_bytes, initdata_algorithm),
            "nonce": b64url(report_data),
        },
        "policy": policy,
        "data_class": data_class,
        "tool_transcript": {"hash": chain_tip, "call_count": call_count},
        "build_provenance": {"slsa_level": 0, "builder": "kata-initdata",
                             "digest": tagged_sha256(initdata_bytes)},
        "appraisal": {"status": "none", "verifier": SELF_VERIFIER},
        "cnf": {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": ""}},  # replaced by sign_record
    }
    references = [ledger_reference(*ledger)] if ledger is not None else []
    references += [gpu_reference(i, e) for i, e in enumerate(gpu_evidence)]
    if references:
        record["references"] = references
    signed = sign_record(record, key)
    TrustRecord.model_validate(signed)  # model and JSON schema checks before it leaves the enclave
    validate_json(signed)
    return signed
