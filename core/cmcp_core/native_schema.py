"""The Cedar schema of the native request model, for bundles written from code.

The enclave's engine (``cmcp_enclave.engine``) asks Cedar with principal = ``cMCP::Agent``,
an action per MCP method (``call_tool``, ``list_tools``, ``read_resource``, ``get_prompt``...),
the catalog entry acted on as resource (``cMCP::Tool``, ``cMCP::Resource``, ``cMCP::Prompt``,
or ``cMCP::Server::"logging"``) with its catalog attributes, and a context of the request's
arguments plus session state (and ``uri``, the URI asked for, on resources). A bundle's schema
must say so; only the arguments differ from bundle to bundle. The examples ship the same text as files.
"""

from __future__ import annotations

from collections.abc import Mapping

# What the catalog says of a tool, resource or prompt (one record shape for the three kinds).
_ENTRY = """{
    name: String,
    server: String,
    sensitivity: String,
    sensitivity_rank: Long,
    compliance_domain: String,
    destination: String,
    tags: Set<String>,
  }"""

_STATE = """    arguments: Arguments,
    max_sensitivity: String,
    max_rank: Long,
    tags: Set<String>,
    call_count: Long,
    tools_called: Set<String>,
    previous_tool: String,
"""


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
  entity Tool = {_ENTRY};
  entity Resource = {_ENTRY};  // id: the catalog's resource_uri or resource_template
  entity Prompt = {_ENTRY};
  entity Server = {{ name: String }};  // Server::"logging": the upstream's log level
  type Arguments = {{
{args}  }};
  type Context = {{
{_STATE}  }};
  type ResourceContext = {{
{_STATE}    uri: String,  // the URI asked for (the resource entity may be a template it matched)
  }};
  type InputContext = {{  // what the asking request saw (uri: when a resource read asks)
{_STATE}    uri?: String,
  }};
  action call_tool, list_tools appliesTo {{ principal: Agent, resource: Tool, context: Context }};
  action read_resource, subscribe_resource, unsubscribe_resource, list_resources
    appliesTo {{ principal: Agent, resource: Resource, context: ResourceContext }};
  action get_prompt, list_prompts appliesTo {{ principal: Agent, resource: Prompt, context: Context }};
  action complete appliesTo {{ principal: Agent, resource: [Prompt, Resource], context: Context }};
  action set_log_level appliesTo {{ principal: Agent, resource: Server, context: Context }};
  // an upstream's request to the agent (sampling/createMessage, elicitation/create, roots/list)
  // while it answers a request on the resource
  action sample, elicit, list_roots
    appliesTo {{ principal: Agent, resource: [Tool, Resource, Prompt], context: InputContext }};
}}
"""
