"""Schema validation of every policy in a bundle, with errors naming file and policy id.

An invalid bundle never serves: the enclave refuses to start, ``cmcpctl bundle validate``
exits non-zero and the operator's admission webhook rejects it, all through this module so
that the three agree on what "valid" means and on the wording of each error.

Policy ids: Cedar numbers policies ``policy0, policy1, ...`` per parse. Each file is parsed on
its own, so an error names ``<file>`` plus the policy's ``@id`` annotation when it has one,
else ``policy<N>`` counted inside that file. :func:`policy_labels` gives the same names for
the combined policy set the engine evaluates, so decisions and validation errors agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

from cmcp_core.bundle import (
    CATALOG_FILE,
    DEFAULT_STATE_WINDOW_SECONDS,
    MAX_STATE_WINDOW_SECONDS,
    SCHEMA_FILE,
    Bundle,
    catalog_key,
)
from cmcp_core.identity import IdentityConfigError, IdentityPolicy

DEFAULT_SENSITIVITY_LEVELS = ("public", "internal", "confidential", "restricted")


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: which file, which policy (``""`` when not policy-specific), what."""

    file: str
    policy_id: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "policy_id": self.policy_id, "message": self.message}

    def __str__(self) -> str:
        where = f"{self.file} [{self.policy_id}]" if self.policy_id else self.file
        return f"{where}: {self.message}"


def parse_schema(text: str) -> cedarpy.Schema:
    """Parse a schema in either Cedar form: JSON (the origin's) or human-readable text."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return cedarpy.Schema.from_json_str(text)
    return cedarpy.Schema.from_str(text)


def sensitivity_levels(bundle: Bundle) -> tuple[str, ...]:
    """Ordered labels, lowest first: the manifest may override the default four."""
    levels = bundle.manifest.get("sensitivity_levels")
    if isinstance(levels, list) and levels and all(isinstance(x, str) for x in levels):
        return tuple(levels)
    return DEFAULT_SENSITIVITY_LEVELS


MAX_ARGUMENT_BYTES = 256 * 1024  # the enclave's ceiling; a tool may declare less, never more


def state_window_seconds(bundle: Bundle) -> int:
    """How long a principal's taint, sensitivity and call budget last: the manifest's
    ``state_window_seconds`` (1 s to 31 days), else 24 h. Anything else is a validation issue."""
    value = bundle.manifest.get("state_window_seconds", DEFAULT_STATE_WINDOW_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STATE_WINDOW_SECONDS:
        return DEFAULT_STATE_WINDOW_SECONDS
    return value


def argument_limit(entry: Mapping[str, Any]) -> int:
    """How many bytes of JSON arguments a call to this catalog entry may carry: its
    ``max_argument_bytes`` (2 to 256 KiB), else the ceiling. A bound per tool keeps one agent's
    huge arguments from costing every other agent Cedar time. Anything else is a validation issue."""
    value = entry.get("max_argument_bytes", MAX_ARGUMENT_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_ARGUMENT_BYTES:
        return MAX_ARGUMENT_BYTES
    return value


def request_model(bundle: Bundle) -> str:
    """``native`` or ``phase1``: the manifest's ``request_model`` when present; otherwise
    ``phase1`` when the schema has the origin gateway's context (``session_max_sensitivity``).

    Origin bundles predate the field, and adding it would change their pinned bundle_hash, so
    a migrating bundle is recognised by its schema instead.
    """
    if "request_model" in bundle.manifest:
        return bundle.request_model
    return "phase1" if "session_max_sensitivity" in bundle.schema else "native"


def policy_names(text: str) -> list[str]:
    """Names of the policies in one file, in Cedar's positional order."""
    pset = cedarpy.PolicySet.from_str(text)
    count = len(pset)
    if count == 0:
        return []
    # @id annotations: ask Cedar for its JSON form so we never hand-parse policy text.
    est: Any = json.loads(cedarpy.policies_to_json_str(text))
    static = est.get("staticPolicies", {}) if isinstance(est, dict) else {}
    names: list[str] = []
    for index in range(count):
        pid = f"policy{index}"
        annotations = static.get(pid, {}).get("annotations", {}) if isinstance(static, dict) else {}
        label = annotations.get("id") if isinstance(annotations, dict) else None
        names.append(label if isinstance(label, str) and label else pid)
    return names


def policy_labels(bundle: Bundle) -> dict[str, str]:
    """Map Cedar's id in the combined set (files in sorted order) to ``file#name``."""
    labels: dict[str, str] = {}
    offset = 0
    for path, text in bundle.policies.items():
        names = policy_names(text)
        for index, name in enumerate(names):
            labels[f"policy{offset + index}"] = f"{path}#{name}"
        offset += len(names)
    return labels


def combined_policy_text(bundle: Bundle) -> str:
    """All policy files joined in sorted-path order: the exact set the engine parses."""
    return "\n".join(text for _, text in bundle.policies.items())


def validate_bundle(bundle: Bundle) -> list[ValidationIssue]:
    """Every error in the bundle; empty list means it may serve."""
    issues: list[ValidationIssue] = []
    try:
        schema = parse_schema(bundle.schema)
    except ValueError as exc:
        return [ValidationIssue(SCHEMA_FILE, "", f"schema does not parse: {exc}")]
    if "namespace cMCP " not in str(schema):
        issues.append(ValidationIssue(SCHEMA_FILE, "", "schema must declare namespace cMCP: the "
                                      "request models name cMCP:: entity types and actions"))
    if not bundle.policies:
        issues.append(ValidationIssue("", "", "bundle has no .cedar policy files"))
    for path, text in bundle.policies.items():
        try:
            names = policy_names(text)
        except ValueError as exc:
            issues.append(ValidationIssue(path, "", f"parse error: {exc}"))
            continue
        if json.loads(cedarpy.policies_to_json_str(text)).get("templates"):
            issues.append(ValidationIssue(path, "", "policy templates are not supported; "
                                                    "write static policies"))
            continue
        if not names:
            issues.append(ValidationIssue(path, "", "file holds no policy"))
            continue
        result = cedarpy.validate_policies(text, schema)
        for err in result.errors:
            pid = err.policy_id
            name = names[int(pid[6:])] if pid.startswith("policy") and pid[6:].isdigit() \
                and int(pid[6:]) < len(names) else pid
            issues.append(ValidationIssue(path, name, err.error))
    ids: dict[str, str] = {}
    for path, text in bundle.policies.items():
        try:
            names = policy_names(text)
        except ValueError:
            continue
        for name in names:
            if not name.startswith("policy") and name in ids:
                issues.append(ValidationIssue(path, name, f"@id also used in {ids[name]}"))
            ids.setdefault(name, path)
    issues.extend(_catalog_issues(bundle))
    window = bundle.manifest.get("state_window_seconds", DEFAULT_STATE_WINDOW_SECONDS)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_STATE_WINDOW_SECONDS:
        issues.append(ValidationIssue("manifest.json", "", "state_window_seconds must be an integer "
                                      f"from 1 to {MAX_STATE_WINDOW_SECONDS} (31 days), got {window!r}"))
    model = request_model(bundle)
    if model not in ("native", "phase1"):
        issues.append(ValidationIssue("manifest.json", "",
                                      f"request_model must be native or phase1, got {model!r}"))
    issues.extend(_identity_issues(bundle))
    return issues


def _identity_issues(bundle: Bundle) -> list[ValidationIssue]:
    """The ``identity`` section loads, and a tool that requires scopes has tokens to carry them."""
    try:
        policy = IdentityPolicy.from_manifest(bundle.manifest)
    except IdentityConfigError as exc:
        return [ValidationIssue("manifest.json", "", str(exc))]
    issues = []
    for entry in bundle.catalog:
        scopes = entry.get("required_scopes")
        if scopes is None:
            continue
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes):
            issues.append(ValidationIssue(CATALOG_FILE, "", f"{_label(entry)}: "
                                          "required_scopes must be a list of scope tokens"))
        elif policy is None:
            issues.append(ValidationIssue(CATALOG_FILE, "", f"{_label(entry)} requires "
                                          "scopes, but the manifest trusts no token issuer (identity)"))
    return issues


def _catalog_issues(bundle: Bundle) -> list[ValidationIssue]:
    levels = sensitivity_levels(bundle)
    issues: list[ValidationIssue] = []
    for entry in bundle.catalog:
        label = entry.get("sensitivity_level", levels[0])
        if label not in levels:
            issues.append(ValidationIssue(
                CATALOG_FILE, "",
                f"{_label(entry)}: sensitivity_level {label!r} is not one of "
                f"{', '.join(levels)}"))
        bound = entry.get("max_argument_bytes", MAX_ARGUMENT_BYTES)
        if isinstance(bound, bool) or not isinstance(bound, int) or not 2 <= bound <= MAX_ARGUMENT_BYTES:
            issues.append(ValidationIssue(
                CATALOG_FILE, "", f"{_label(entry)}: max_argument_bytes must be an "
                f"integer from 2 to {MAX_ARGUMENT_BYTES}, got {bound!r}"))
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            issues.append(ValidationIssue(CATALOG_FILE, "",
                                          f"{_label(entry)}: tags must be strings"))
    return issues


def _label(entry: dict[str, Any]) -> str:
    """How a message names a catalog entry: ``tool 'x'``, ``resource 'ehr://...'``..."""
    kind, name = catalog_key(entry)
    return f"{kind or 'entry'} {name!r}"
