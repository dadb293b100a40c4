"""Bundles that trust a token issuer, for tests: :func:`identity_bundle` copies a bundle directory
with the ``identity`` section that trusts it (the issuer itself: :mod:`cmcp_devkit.issuer`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

AGENT_WITH_ATTRIBUTES = """entity Agent = {
    issuer?: String, subject?: String, client_id?: String, groups?: Set<String>, scopes?: Set<String>,
  };"""


def identity_bundle(source: Path, target: Path, section: dict[str, Any], *,
                    required_scopes: dict[str, list[str]] | None = None,
                    policies: dict[str, str] | None = None) -> Path:
    """A copy of the bundle directory ``source`` that trusts ``section``'s issuers; its schema gives
    ``cMCP::Agent`` the attributes a token proves, ``policies`` adds Cedar files."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "identity": section}, indent=2))
    catalog = json.loads((target / "catalog.json").read_text())
    for entry in catalog:
        if required_scopes and entry.get("tool_name") in required_scopes:
            entry["required_scopes"] = required_scopes[entry["tool_name"]]
    (target / "catalog.json").write_text(json.dumps(catalog, indent=2, ensure_ascii=False))
    schema = target / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("entity Agent;", AGENT_WITH_ATTRIBUTES, 1))
    for name, text in (policies or {}).items():
        (target / "policies" / name).write_text(text)
    return target
