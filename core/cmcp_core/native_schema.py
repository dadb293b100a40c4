"""The Cedar schema of the native request model, for bundles written from code.

The enclave's engine (``cmcp_enclave.engine``) asks Cedar with principal = ``cMCP::Agent``,
action = ``call_tool`` / ``list_tools``, resource = ``cMCP::Tool`` with its catalog attributes,
and a context of the call's arguments plus session state. A bundle's schema must say so; only
the arguments differ from bundle to bundle. The examples ship the same text as files.
"""

from __future__ import annotations

from collections.abc import Mapping


def native_schema(arguments: Mapping[str, str], comment: str = "") -> str:
    """Schema text; ``arguments`` maps each (optional) argument name to its Cedar type."""
    head = f"// {comment}\n" if comment else ""
    args = "".join(f"    {name}?: {kind},\n" for name, kind in arguments.items())
    return head + f"""namespace cMCP {{
  entity Agent = {{  // set when the bundle trusts token issuers (manifest identity)
    issuer?: String,
    subject?: String,
    client_id?: String,
    groups?: Set<String>,
    scopes?: Set<String>,
  }};
  entity Tool = {{
    name: String,
    server: String,
    sensitivity: String,
    sensitivity_rank: Long,
    compliance_domain: String,
    destination: String,
    tags: Set<String>,
  }};
  type Arguments = {{
{args}  }};
  type Context = {{
    arguments: Arguments,
    max_sensitivity: String,
    max_rank: Long,
    tags: Set<String>,
    call_count: Long,
    tools_called: Set<String>,
    previous_tool: String,
  }};
  action call_tool appliesTo {{ principal: Agent, resource: Tool, context: Context }};
  action list_tools appliesTo {{ principal: Agent, resource: Tool, context: Context }};
}}
"""
