"""The conformance bundle: the policy the suite's expectations are written against.

The suite needs known facts — which tool Cedar allows, which it forbids, which tool carries
PHI and which sends data out, a non-ASCII tool name — so the route under test must serve
this bundle (``cmcpctl conformance --write-bundle DIR [--bundle-mode advisory]`` writes it for a
cluster). It is
generated from code, not shipped as data files, so an installed wheel always has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmcp_conformance.target import Profile
from cmcp_core.native_schema import native_schema

SCHEMA = native_schema(
    {name: "String" for name in ("text", "patient_id", "to", "body", "query")},
    "Native request model: principal = agent, action = MCP method, resource = catalogued tool.",
)


def _policies(profile: Profile) -> dict[str, str]:
    return {
        "policies/allow.cedar": (
            "// The catalog is the allowlist: every catalogued tool may be listed and called.\n"
            '@id("allow-catalogued")\n'
            'permit (principal, action in [cMCP::Action::"call_tool", cMCP::Action::"list_tools"], '
            "resource);\n"
            "\n"
            "// Catalogued resources and prompts too; nothing permits set_log_level.\n"
            '@id("allow-catalogued-resources-and-prompts")\n'
            'permit (principal, action in [cMCP::Action::"read_resource", cMCP::Action::"list_resources", '
            'cMCP::Action::"get_prompt", cMCP::Action::"list_prompts"], resource);\n'
        ),
        "policies/forbid.cedar": (
            "// A destructive tool nobody may call.\n"
            '@id("forbid-delete")\n'
            'forbid (principal, action == cMCP::Action::"call_tool", '
            f'resource == cMCP::Tool::"{profile.denied_tool}");\n'
            "\n"
            "// Taint: once the session has read PHI, nothing may leave for an external destination.\n"
            '@id("no-external-after-phi")\n'
            'forbid (principal, action == cMCP::Action::"call_tool", resource)\n'
            'when { resource.destination == "external" && context.tags.contains("phi") };\n'
        ),
    }


def _tool(
    name: str,
    description: str,
    *,
    sensitivity: str = "public",
    domain: str = "",
    destination: str = "internal",
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "tool_name": name,
        "server": "conformance-upstream",
        "approved_definition": {
            "description": description,
            "inputSchema": {"type": "object", "properties": properties or {}},
        },
        "definition_hash": "sha256:" + "0" * 64,
        "sensitivity_level": sensitivity,
        "compliance_domain": domain,
        "destination": destination,
    }


def catalog(profile: Profile) -> list[dict[str, Any]]:
    """Catalog entries; ``profile.uncatalogued_tool`` and ``.uncatalogued_resource`` are absent."""
    text = {"text": {"type": "string"}}
    return [
        _tool(profile.allowed_tool, "Echo the text back (structured)", properties=text),
        _tool(
            profile.denied_tool, "Delete records (always forbidden)", sensitivity="internal", properties=text
        ),
        _tool(
            profile.phi_tool,
            "Read a patient's record",
            sensitivity="restricted",
            domain="PHI",
            properties={"patient_id": {"type": "string"}},
        ),
        _tool(
            profile.external_tool,
            "Send an e-mail outside the organisation",
            sensitivity="internal",
            destination="external",
            properties={"to": {"type": "string"}, "body": {"type": "string"}},
        ),
        _tool(profile.non_ascii_tool, "Lire des données (non-ASCII tool name)", properties=text),
        {"resource_uri": profile.resource, "server": "conformance-upstream", "sensitivity_level": "public"},
        {"prompt_name": profile.prompt, "server": "conformance-upstream", "sensitivity_level": "public"},
    ]


def files(profile: Profile | None = None, *, mode: str = "enforce",
          identity: dict[str, Any] | None = None) -> dict[str, str]:
    """The bundle as ``{relative path: text}``; ``mode`` is measured via the manifest, and so is
    ``identity``, the token issuers it trusts (cmcp_core.identity), when given."""
    prof = profile or Profile()
    manifest = {
        "version": "1.0.0",
        "authored_at": "2026-11-25T00:00:00Z",
        "author_identity": "cmcp-conformance",
        "commit_sha": "conformance-v1",
        "enforcement_mode": mode,
        "request_model": "native",
        **({"identity": identity} if identity is not None else {}),
    }
    out = dict(_policies(prof))
    out["manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    out["schema.cedarschema"] = SCHEMA
    out["catalog.json"] = json.dumps(catalog(prof), indent=2, ensure_ascii=False) + "\n"
    return out


def write(directory: Path, profile: Profile | None = None, *, mode: str = "enforce",
          identity: dict[str, Any] | None = None) -> Path:
    """Write the bundle under ``directory`` (created) and return it."""
    for rel, text in files(profile, mode=mode, identity=identity).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory
