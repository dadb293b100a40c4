"""Policy bundles: loading, ``bundle_hash``, ``catalog_hash`` and the optional signature.

The hash algorithm is the origin cMCP's (docs/policy-authoring.md, "Hashes") so that users
migrating keep their pinned hashes; the origin minimal bundle must hash to the origin tool's value.
Validation of the Cedar text against the schema lives in :mod:`cmcp_core.validation`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.digest import b64url_decode, jcs, sha256_hex, tagged_sha256

MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = "schema.cedarschema"
CATALOG_FILE = "catalog.json"
SIGNATURE_CONTEXT = b"cmcp-policy-bundle-v1|"
ENFORCEMENT_MODES = ("enforce", "advisory", "silent")
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
# How long a principal's taint, sensitivity and budgets last (manifest `state_window_seconds`).
DEFAULT_STATE_WINDOW_SECONDS = 24 * 3600
MAX_STATE_WINDOW_SECONDS = 31 * 24 * 3600


class BundleError(ValueError):
    """A bundle that cannot be loaded. ``file`` names the offending file when known."""

    def __init__(self, message: str, *, file: str | None = None, code: str = "BUNDLE_INVALID"):
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file
        self.code = code
        self.message = message


def normalise_text(text: str) -> bytes:
    """CRLF and lone CR become LF, then UTF-8 — the origin's normalisation before hashing."""
    return text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle held as text, independent of where it came from (disk or a CR)."""

    manifest: dict[str, Any]
    policies: dict[str, str]  # POSIX path relative to the bundle root -> Cedar text
    schema: str
    catalog: list[dict[str, Any]] = field(default_factory=list)

    @property
    def enforcement_mode(self) -> str:
        mode = self.manifest.get("enforcement_mode", "enforce")
        return mode if isinstance(mode, str) else "enforce"

    @property
    def request_model(self) -> str:
        """``native`` (typed, default) or ``phase1`` (the origin gateway's model)."""
        model = self.manifest.get("request_model", "native")
        return model if isinstance(model, str) else "native"

    @property
    def signature(self) -> str | None:
        sig = self.manifest.get("signature")
        return sig if isinstance(sig, str) else None

    def policy_file_hashes(self) -> dict[str, str]:
        return {path: sha256_hex(normalise_text(text)) for path, text in self.policies.items()}

    def schema_hash(self) -> str:
        return sha256_hex(normalise_text(self.schema))

    def hashed_manifest(self) -> dict[str, Any]:
        return {k: v for k, v in self.manifest.items() if k != "signature"}

    @property
    def bundle_hash(self) -> str:
        return compute_bundle_hash(self)

    @property
    def catalog_hash(self) -> str:
        return compute_catalog_hash(self.catalog)

    def catalog_by_tool(self) -> dict[str, dict[str, Any]]:
        """The tool entries by tool name (resources and prompts left out)."""
        return {str(entry["tool_name"]): entry for entry in self.catalog if "tool_name" in entry}

    def to_files(self) -> dict[str, str]:
        """The bundle as a flat ``{relative path: text}`` map (ConfigMap / CR form)."""
        files = dict(self.policies)
        files[MANIFEST_FILE] = json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n"
        files[SCHEMA_FILE] = self.schema
        files[CATALOG_FILE] = json.dumps(self.catalog, indent=2, ensure_ascii=False) + "\n"
        return files


def compute_bundle_hash(bundle: Bundle) -> str:
    document = {
        "manifest": bundle.hashed_manifest(),
        "policy_files": bundle.policy_file_hashes(),
        "schema_hash": bundle.schema_hash(),
    }
    return tagged_sha256(jcs(document))


def compute_catalog_hash(catalog: list[dict[str, Any]]) -> str:
    # Tools first, by name (a tools-only catalog hashes as it always has), then the other kinds.
    ordered = sorted(catalog, key=_hash_order)
    return tagged_sha256(jcs(ordered))


def _hash_order(entry: dict[str, Any]) -> tuple[bool, str, str]:
    kind, name = catalog_key(entry)
    return kind != "tool", kind, name


# What a catalog entry offers, by the key that names it: an MCP tool, a resource (one URI, or an
# RFC 6570 level-1 template such as ``ehr://patients/{id}``) or a prompt.
CATALOG_KEYS = {"tool_name": "tool", "resource_uri": "resource", "resource_template": "resource",
                "prompt_name": "prompt"}


_VARIABLE = r"\{[A-Za-z0-9_]+\}"  # a level-1 template variable, {name}
_TEMPLATE = re.compile(rf"[^{{}}]*({_VARIABLE}[^{{}}]*)+")


# One template variable: a non-empty path segment that is not a dot-segment ("." or "..", also
# percent-encoded), so a template never matches a URI that climbs out of where it points.
_SEGMENT = r"(?!(?:\.|%2[eE]){1,2}(?:[/?#]|$))[^/?#]+"


def template_pattern(template: str) -> re.Pattern[str]:
    """A ``resource_template``'s URIs: each ``{name}`` stands for one path segment (not ``..``)."""
    parts = re.split(_VARIABLE, template)
    return re.compile(_SEGMENT.join(re.escape(p) for p in parts))


def catalog_key(entry: dict[str, Any]) -> tuple[str, str]:
    """``(kind, name)`` of a catalog entry (``("", "")`` for one :func:`load` would refuse)."""
    for key, kind in CATALOG_KEYS.items():
        if key in entry:
            return kind, str(entry[key])
    return "", ""


def signing_payload(bundle_hash: str) -> bytes:
    return SIGNATURE_CONTEXT + bundle_hash.encode("ascii")


def verify_signature(bundle: Bundle, signer_keys: list[Ed25519PublicKey]) -> bool:
    """True when the manifest's ``signature`` (base64url Ed25519) verifies with any key."""

    if bundle.signature is None:
        return False
    try:
        raw = b64url_decode(bundle.signature)
    except ValueError:
        return False
    payload = signing_payload(bundle.bundle_hash)
    for key in signer_keys:
        try:
            key.verify(raw, payload)
            return True
        except InvalidSignature:
            continue
    return False


def _parse_json(text: str, file: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                          file=file) from exc


def bundle_from_files(files: Mapping[str, str]) -> Bundle:
    """Build a :class:`Bundle` from ``{relative POSIX path: text}``; structural checks only."""
    total = sum(len(text.encode("utf-8")) for text in files.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle is {total} bytes, over the {MAX_BUNDLE_BYTES} byte limit",
                          code="BUNDLE_TOO_LARGE")
    for path in files:
        if path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise BundleError("path must be relative and stay inside the bundle", file=path)
    if MANIFEST_FILE not in files:
        raise BundleError("missing manifest", file=MANIFEST_FILE, code="BUNDLE_FILE_MISSING")
    if SCHEMA_FILE not in files:
        raise BundleError("missing Cedar schema", file=SCHEMA_FILE, code="BUNDLE_FILE_MISSING")
    manifest = _parse_json(files[MANIFEST_FILE], MANIFEST_FILE)
    if not isinstance(manifest, dict):
        raise BundleError("manifest must be a JSON object", file=MANIFEST_FILE)
    for key in ("version", "authored_at", "author_identity", "commit_sha"):
        if not isinstance(manifest.get(key), str):
            raise BundleError(f"manifest field '{key}' must be a string", file=MANIFEST_FILE)
    mode = manifest.get("enforcement_mode", "enforce")
    if mode not in ENFORCEMENT_MODES:
        raise BundleError(f"enforcement_mode must be one of {', '.join(ENFORCEMENT_MODES)}",
                          file=MANIFEST_FILE)
    catalog: Any = []
    if CATALOG_FILE in files:
        catalog = _parse_json(files[CATALOG_FILE], CATALOG_FILE)
        _check_catalog(catalog)
    policies = {p: t for p, t in files.items() if p.endswith(".cedar")}
    if not policies:
        raise BundleError("bundle has no .cedar policy files", file=None,
                          code="BUNDLE_FILE_MISSING")
    return Bundle(manifest=manifest, policies=dict(sorted(policies.items())),
                  schema=files[SCHEMA_FILE], catalog=catalog)


def _check_catalog(catalog: Any) -> None:
    if not isinstance(catalog, list):
        raise BundleError("catalog must be a JSON array of tool entries", file=CATALOG_FILE)
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(catalog):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise BundleError(f"{where} must be an object", file=CATALOG_FILE)
        keys = [k for k in CATALOG_KEYS if k in entry]
        if len(keys) != 1:
            raise BundleError(f"{where} needs exactly one of {', '.join(CATALOG_KEYS)}", file=CATALOG_FILE)
        name = entry[keys[0]]
        if not isinstance(name, str) or not name:
            raise BundleError(f"{where} needs a non-empty string {keys[0]}", file=CATALOG_FILE)
        if keys[0] == "resource_template" and not _TEMPLATE.fullmatch(name):
            raise BundleError(f"{where}: resource_template {name!r} must be a URI with {{name}} "
                              "variables (RFC 6570 level 1)", file=CATALOG_FILE)
        offered = catalog_key(entry)
        if offered in seen:
            raise BundleError(f"duplicate {keys[0]} '{name}'", file=CATALOG_FILE)
        seen.add(offered)
        for key in ("server", "sensitivity_level"):
            if key in entry and not isinstance(entry[key], str):
                raise BundleError(f"{where} ('{name}'): {key} must be a string",
                                  file=CATALOG_FILE)


def _bundle_paths(root: Path) -> list[Path]:
    """Every file of the bundle's visible tree, following symlinked directories that stay inside
    ``root`` (a kubelet's ConfigMap volume shows ``policies`` as a link into ``..data``) once each;
    entries named ``..*`` (the kubelet's ``..data`` and ``..<timestamp>/`` copies) are not the bundle."""
    real_root = root.resolve()
    seen: set[Path] = set()
    found: list[Path] = []
    for current, dirs, names in os.walk(root, followlinks=True):
        here = Path(current).resolve()
        if here in seen or not here.is_relative_to(real_root):
            dirs[:] = []
            continue
        seen.add(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".."))
        found += [Path(current) / n for n in names if not n.startswith("..")]
    return sorted(found)


def read_bundle_files(root: Path) -> dict[str, str]:
    """Read the files a bundle directory contributes, keyed by POSIX relative path."""
    if not root.is_dir():
        raise BundleError(f"{root} is not a directory", code="BUNDLE_FILE_MISSING")
    files: dict[str, str] = {}
    for path in _bundle_paths(root):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel.endswith(".cedar") or rel in (MANIFEST_FILE, SCHEMA_FILE, CATALOG_FILE):
            try:
                files[rel] = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BundleError(f"not UTF-8 text: {exc}", file=rel) from exc
    return files


def load_bundle(root: Path | str) -> Bundle:
    return bundle_from_files(read_bundle_files(Path(root)))
