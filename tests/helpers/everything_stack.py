"""The everything upstream (:mod:`cmcp_devkit.everything`) behind the gateway, for the MCP tests.

* ``everything_bundle(root, *policies)`` — a native bundle cataloguing everything it offers (its
  patient records as PHI); ``ALLOW``, ``FORBID_PHI`` and ``FORBID_RESOURCES`` are policies for it.
* ``async with gateway_in_front(enclave, up) as url:`` — a gateway (one open route pinned to
  ``enclave``'s bundle) in front of a running everything upstream.
* ``async with everything_stack(enclave) as (url, up):`` — the upstream behind a guard that
  attests ``enclave``, and the gateway in front of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cmcp_core.native_schema import native_schema
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.everything import (
    PROMPTS,
    RESOURCE_TEMPLATES,
    RESOURCES,
    SENSITIVE_RESOURCES,
    TOOLS,
    RunningEverything,
    run_everything,
)
from cmcp_gateway.config import GatewayLimits, RouteConfig
from tests.helpers.gateway_stack import AUDIENCE, gateway_config, make_guard, run_gateway

ALLOW = '@id("allow-catalogued")\npermit (principal, action, resource);\n'
FORBID_PHI = ('@id("no-patient-records")\nforbid (principal, action, resource is cMCP::Resource)\n'
              'when { resource.compliance_domain == "phi" };\n')
FORBID_RESOURCES = ('@id("no-resources")\nforbid (principal, action == cMCP::Action::"read_resource", '
                    "resource);\n")


def everything_bundle(root: Path, *policies: str) -> Path:
    """A native bundle cataloguing every tool, resource, template and prompt of the everything
    upstream (its patient records as PHI), with ``policies``."""
    catalog: list[dict[str, Any]] = [{"tool_name": t, "server": "everything"} for t in TOOLS]
    for uri in (*RESOURCES, *RESOURCE_TEMPLATES):
        key = "resource_template" if "{" in uri else "resource_uri"
        entry: dict[str, Any] = {key: uri, "server": "everything"}
        if uri in SENSITIVE_RESOURCES:
            entry.update(sensitivity_level="restricted", compliance_domain="phi")
        catalog.append(entry)
    catalog += [{"prompt_name": p, "server": "everything"} for p in PROMPTS]
    manifest = {"version": "1.0.0", "authored_at": "2026-12-05T00:00:00Z", "author_identity": "tests",
                "commit_sha": "everything", "enforcement_mode": "enforce", "request_model": "native"}
    (root / "policies").mkdir(parents=True)
    for index, text in enumerate(policies):
        (root / "policies" / f"p{index}.cedar").write_text(text)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "schema.cedarschema").write_text(native_schema({}))
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root


@contextlib.asynccontextmanager
async def gateway_in_front(enclave: EnclaveProcess, up: RunningEverything) -> AsyncIterator[str]:
    pinned = frozenset({enclave.bundle_hash})
    route = RouteConfig(name="everything", upstream=up.url, audience=AUDIENCE, enclaves=(enclave.address,),
                        expected_bundle_hashes=pinned, open=True)
    config = gateway_config(route, limits=GatewayLimits(decide_timeout_seconds=15.0))
    async with run_gateway(config, None) as gw:
        yield gw.url


@contextlib.asynccontextmanager
async def everything_stack(enclave: EnclaveProcess) -> AsyncIterator[tuple[str, RunningEverything]]:
    async with (
        run_everything(guard=make_guard([enclave], AUDIENCE)) as up,
        gateway_in_front(enclave, up) as url,
    ):
        yield url, up
