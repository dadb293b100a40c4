"""What an MCP request acts on, and the digest of what it asks: the pair both ends bind.

The gateway asks the enclave about exactly this target and the guard checks the permit against
exactly this target, so both ends parse and digest requests with the same code. Every method in
:data:`GATED_METHODS` is decided by the enclave and needs a permit at the guard; the list
methods in :data:`LIST_METHODS` are filtered per principal by the enclave (the guard lets them
pass, as it lets the handshake).

Per method, the target and the arguments the permit's digest covers (``_meta`` is protocol
metadata, e.g. a progress token, and is relayed without being bound):

=======================  ==========  ===================  ===================================
method                   kind        name                 arguments
=======================  ==========  ===================  ===================================
tools/call               tool        ``name``             ``arguments``
resources/read           resource    ``uri``              ``{}``
resources/subscribe      resource    ``uri``              ``{}``
resources/unsubscribe    resource    ``uri``              ``{}``
prompts/get              prompt      ``name``             ``arguments``
completion/complete      prompt or   ``ref.name`` or      ``{"ref": ..., "argument": ...,
                         resource    ``ref.uri``          "context": ...}``
logging/setLevel         server      ``logging``          ``{"level": ...}``
=======================  ==========  ===================  ===================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code

TOOLS_CALL = "tools/call"
TOOL, RESOURCE, PROMPT, SERVER = "tool", "resource", "prompt", "server"
LOGGING = "logging"  # the one ``server`` target: the upstream's log level
# list method -> (kind of its items, the result key that holds them, the item key that names one)
LIST_METHODS: Mapping[str, tuple[str, str, str]] = {
    "tools/list": (TOOL, "tools", "name"),
    "resources/list": (RESOURCE, "resources", "uri"),
    "resources/templates/list": (RESOURCE, "resourceTemplates", "uriTemplate"),
    "prompts/list": (PROMPT, "prompts", "name"),
}
# gated method -> the kind of its target (completion/complete: the kind its ``ref`` names)
METHOD_KINDS: Mapping[str, str] = {
    TOOLS_CALL: TOOL, "resources/read": RESOURCE, "resources/subscribe": RESOURCE,
    "resources/unsubscribe": RESOURCE, "prompts/get": PROMPT, "logging/setLevel": SERVER,
}
GATED_METHODS = frozenset({*METHOD_KINDS, "completion/complete"})
# gated methods whose allowed requests make up a principal's state (taint, budgets): they hand
# the agent data. Subscriptions, completions and the log level carry none.
STATEFUL_METHODS = frozenset({TOOLS_CALL, "resources/read", "prompts/get"})
_COMPLETION_REFS = {"ref/prompt": (PROMPT, "name"), "ref/resource": (RESOURCE, "uri")}


@dataclass(frozen=True, slots=True)
class Target:
    """What one gated request acts on: the permit's ``method`` and ``tool`` (= ``name``) claims,
    and the arguments whose digest it carries."""

    method: str
    kind: str
    name: str
    arguments: dict[str, Any]


def call_target(method: str, params: Any) -> Target:
    """The target of a request to a gated ``method``; ``MCP_INVALID_REQUEST`` if malformed."""
    if not isinstance(params, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{method} params must be an object")
    if method == TOOLS_CALL:
        name, arguments = tool_call_target(params)
        return Target(method, TOOL, name, arguments)
    if METHOD_KINDS.get(method) == RESOURCE:
        return Target(method, RESOURCE, _string(params, "uri", method), {})
    if method == "prompts/get":
        given = params.get("arguments")
        if given is not None and not isinstance(given, dict):
            raise CmcpError(Code.MCP_INVALID_REQUEST, "prompts/get arguments must be an object")
        return Target(method, PROMPT, _string(params, "name", method), given or {})
    if method == "completion/complete":
        kind, name = completion_ref(params.get("ref"))
        argument = params.get("argument")
        if not isinstance(argument, dict):
            raise CmcpError(Code.MCP_INVALID_REQUEST, "completion/complete needs an argument object")
        arguments = {"ref": params["ref"], "argument": argument}
        if params.get("context") is not None:
            arguments["context"] = params["context"]
        return Target(method, kind, name, arguments)
    if method == "logging/setLevel":
        return Target(method, SERVER, LOGGING, {"level": _string(params, "level", method)})
    raise CmcpError(Code.METHOD_NOT_FOUND, f"{method!r} is not a method the enclave decides")


def completion_ref(ref: Any) -> tuple[str, str]:
    """``(kind, name)`` of a completion's ``ref``: a prompt by name or a resource by URI."""
    found = _COMPLETION_REFS.get(str(ref.get("type"))) if isinstance(ref, dict) else None
    if found is None:
        raise CmcpError(Code.MCP_INVALID_REQUEST,
                        "completion/complete needs a ref of type ref/prompt or ref/resource")
    kind, key = found
    return kind, _string(ref, key, "completion/complete")


def forwarded_params(target: Target, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params the gateway sends upstream for ``target``: exactly what the permit binds, plus
    the agent's ``_meta`` (progress token and the like)."""
    if target.method in (TOOLS_CALL, "prompts/get"):
        out: dict[str, Any] = {"name": target.name, "arguments": target.arguments}
    elif target.kind == RESOURCE and target.method != "completion/complete":
        out = {"uri": target.name}
    else:  # completion/complete, logging/setLevel: their arguments are their params
        out = dict(target.arguments)
    meta = params.get("_meta")
    if isinstance(meta, dict):
        out["_meta"] = meta
    return out


def _string(params: Mapping[str, Any], key: str, method: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{method} needs a non-empty string {key!r}")
    return value


def tool_call_target(params: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(tool name, arguments)`` of a ``tools/call``; absent arguments mean ``{}``."""
    if not isinstance(params, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call params must be an object")
    name = params.get("name")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call needs a string name and object arguments")
    return name, arguments


def args_digest(arguments: Mapping[str, Any]) -> str:
    """Digest of the call's arguments (JCS, = ``json_digest``); unrepresentable numbers are refused."""
    try:
        return tagged_sha256(canonical(dict(arguments)))
    except Exception as exc:  # rfc8785 raises its own types for NaN / out-of-range integers
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"arguments cannot be canonicalised: {exc}") from exc
