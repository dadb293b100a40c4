"""PolicyBundle logic without I/O: gather files, hash, validate, check the signature, keep the
hash chain, and name the content-addressed ConfigMap. The reconcile handler and the admission
webhook both call :func:`analyse`, so ``kubectl apply`` and status never disagree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.bundle import (
    SIGNATURE_CONTEXT,
    Bundle,
    BundleError,
    bundle_from_files,
    verify_signature,
)
from cmcp_core.digest import b64url_decode, jcs, tagged_sha256
from cmcp_core.validation import validate_bundle
from cmcp_operator.constants import BUNDLE_LABEL, COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL

GENESIS = "genesis"
KEY_SEP = "__"  # "/" in a bundle path is written "__" in a ConfigMap key
_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class Issue:
    """One reason a bundle cannot serve: the file, the policy id (or ""), and why."""

    file: str
    policy_id: str
    message: str

    def to_status(self) -> dict[str, str]:
        return {"file": self.file, "policyId": self.policy_id, "message": self.message}

    def __str__(self) -> str:
        where = self.file or "bundle"
        if self.policy_id:
            where += f" policy {self.policy_id}"
        return f"{where}: {self.message}"


@dataclass
class Analysis:
    """Everything reconcile and admission need to know about one bundle spec."""

    files: dict[str, str]
    bundle: Bundle | None = None
    issues: list[Issue] = field(default_factory=list)
    signature_state: str = "Unsigned"  # Unsigned | Verified | Invalid
    signer: str = ""

    @property
    def valid(self) -> bool:
        return self.bundle is not None and not self.issues

    def summary(self, limit: int = 5) -> str:
        text = "; ".join(str(i) for i in self.issues[:limit])
        extra = len(self.issues) - limit
        return text + (f"; and {extra} more" if extra > 0 else "")


def path_to_key(path: str) -> str:
    """ConfigMap key for a bundle path: policies/a.cedar -> policies__a.cedar."""
    if not _PATH_RE.match(path) or KEY_SEP in path or ".." in path.split("/"):
        raise ValueError(f"bundle path {path!r} cannot be stored in a ConfigMap key")
    key = path.replace("/", KEY_SEP)
    if len(key) > 253 or not _KEY_RE.match(key):
        raise ValueError(f"bundle path {path!r} cannot be stored in a ConfigMap key")
    return key


def key_to_path(key: str) -> str:
    return key.replace(KEY_SEP, "/")


def gather_files(spec: Mapping[str, Any], configmap_data: Mapping[str, str] | None) -> dict[str, str]:
    """Merge the referenced ConfigMap (keys unflattened) with inline files; inline wins."""
    files: dict[str, str] = {}
    for key, text in (configmap_data or {}).items():
        files[key_to_path(str(key))] = str(text)
    for path, text in (spec.get("files") or {}).items():
        files[str(path)] = str(text)
    return files


def _signer_keys(spec: Mapping[str, Any], issues: list[Issue]) -> list[tuple[str, Ed25519PublicKey]]:
    keys: list[tuple[str, Ed25519PublicKey]] = []
    for index, signer in enumerate(spec.get("trustedSigners") or []):
        name = str(signer.get("name", f"signer{index}"))
        try:
            raw = b64url_decode(str(signer.get("publicKey", "")))
            keys.append((name, Ed25519PublicKey.from_public_bytes(raw)))
        except ValueError as exc:
            issues.append(Issue("spec.trustedSigners", "", f"{name}: not an Ed25519 public key ({exc})"))
    return keys


def _check_signature(bundle: Bundle, spec: Mapping[str, Any], analysis: Analysis) -> None:
    override = spec.get("signature")
    if isinstance(override, str) and override:
        bundle = Bundle(manifest={**bundle.manifest, "signature": override}, policies=bundle.policies,
                        schema=bundle.schema, catalog=bundle.catalog)
    keys = _signer_keys(spec, analysis.issues)
    where = "spec.signature" if override else "manifest.json"
    if bundle.signature is None:
        analysis.signature_state = "Unsigned"
        if spec.get("requireSignature"):
            analysis.issues.append(Issue(where, "", "bundle is unsigned but spec.requireSignature is true"))
        return
    if not keys:
        # A signature nobody asked us to trust proves nothing; say so rather than fail.
        analysis.signature_state = "Unsigned"
        return
    for name, key in keys:
        if verify_signature(bundle, [key]):
            analysis.signature_state, analysis.signer = "Verified", name
            return
    analysis.signature_state = "Invalid"
    analysis.issues.append(Issue(
        where, "", f"signature does not verify with any trusted signer over "
                   f"{SIGNATURE_CONTEXT.decode()}{bundle.bundle_hash}"))


def analyse(spec: Mapping[str, Any], configmap_data: Mapping[str, str] | None = None) -> Analysis:
    """Load, hash and validate a PolicyBundle spec; never raises for a bad bundle."""
    files = gather_files(spec, configmap_data)
    analysis = Analysis(files=files)
    for path in files:
        try:
            path_to_key(path)
        except ValueError as exc:
            analysis.issues.append(Issue(path, "", str(exc)))
    try:
        bundle = bundle_from_files(files)
    except BundleError as exc:
        analysis.issues.append(Issue(exc.file or "", "", exc.message))
        return analysis
    analysis.bundle = bundle
    try:
        problems = validate_bundle(bundle)
    except Exception as exc:  # a validator crash must read as invalid, never as valid
        problems = []
        analysis.issues.append(Issue("", "", f"validation failed: {exc}"))
    analysis.issues.extend(Issue(p.file, p.policy_id, p.message) for p in problems)
    wanted_mode = spec.get("enforcementMode")
    if wanted_mode and wanted_mode != bundle.enforcement_mode:
        analysis.issues.append(Issue(
            "manifest.json", "", f"enforcement_mode is {bundle.enforcement_mode!r} but "
                                 f"spec.enforcementMode asks for {wanted_mode!r} (the manifest is measured)"))
    _check_signature(bundle, spec, analysis)
    return analysis


def configmap_name(bundle_name: str, bundle_hash: str) -> str:
    """Content-addressed, so a rollout never changes what an old pod mounts."""
    digest = bundle_hash.partition(":")[2][:10]
    base = f"cmcp-bundle-{bundle_name}"[: 253 - 11]
    return f"{base}-{digest}"


def configmap_body(bundle_name: str, namespace: str, analysis: Analysis,
                   owner: dict[str, Any]) -> dict[str, Any]:
    """Immutable ConfigMap holding the bundle files, keyed by the flattened path."""
    assert analysis.bundle is not None
    bundle_hash = analysis.bundle.bundle_hash
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(bundle_name, bundle_hash),
            "namespace": namespace,
            "labels": {BUNDLE_LABEL: bundle_name, COMPONENT_LABEL: "policy-bundle",
                       MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"cmcp.dev/bundle-hash": bundle_hash},
            "ownerReferences": [owner],
        },
        "immutable": True,
        "data": {path_to_key(p): t for p, t in sorted(analysis.files.items())},
    }


def volume_items(files: Mapping[str, str]) -> list[dict[str, str]]:
    """ConfigMap volume items that restore the directory layout under the mount."""
    return [{"key": path_to_key(p), "path": p} for p in sorted(files)]


def chain_entry(bundle_hash: str, at: str, prev: str) -> dict[str, str]:
    body = {"at": at, "bundleHash": bundle_hash, "prev": prev}
    return {**body, "hash": tagged_sha256(jcs(body))}


def extend_history(status: Mapping[str, Any], bundle_hash: str, at: str,
                   limit: int) -> tuple[list[dict[str, str]], str, int]:
    """Append ``bundle_hash`` to the chain unless it is already the head's value."""
    history = [dict(h) for h in (status.get("history") or []) if isinstance(h, dict)]
    head = str(status.get("historyHead") or GENESIS)
    length = int(status.get("historyLength") or 0)
    if history and history[-1].get("bundleHash") == bundle_hash:
        return history[-limit:], head, length
    entry = chain_entry(bundle_hash, at, head)
    history.append(entry)
    return history[-limit:], entry["hash"], length + 1


def verify_history(history: list[Mapping[str, Any]], head: str) -> bool:
    """Each kept entry hashes to what it claims and links to its predecessor; the last is head."""
    prev: str | None = None
    for item in history:
        expect = chain_entry(str(item.get("bundleHash")), str(item.get("at")), str(item.get("prev")))
        if expect["hash"] != item.get("hash"):
            return False
        if prev is not None and item.get("prev") != prev:
            return False
        prev = expect["hash"]
    return prev == head if history else head == GENESIS


def hashes_in_history(status: Mapping[str, Any]) -> set[str]:
    return {str(h.get("bundleHash")) for h in (status.get("history") or []) if isinstance(h, dict)}
