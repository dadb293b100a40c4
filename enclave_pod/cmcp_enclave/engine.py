"""Cedar evaluation for one measured bundle, with pre-parsed PolicySet and Entities.

Two request models, chosen by the manifest's ``request_model``:

* ``native`` (default): principal ``cMCP::Agent::"<agent>"``, action ``cMCP::Action::"<method>"``
  (:data:`METHOD_ACTIONS`: ``call_tool``, ``list_tools``, ``read_resource``, ``get_prompt``...),
  resource the catalog entry the request acts on, carrying its catalog attributes:
  ``cMCP::Tool::"<tool>"``, ``cMCP::Resource::"<uri or template>"`` (the requested URI in
  ``context.uri``), ``cMCP::Prompt::"<name>"``, or ``cMCP::Server::"logging"`` for the
  upstream's log level; context = ``arguments`` plus the *principal's* state within the bundle's window
  (``max_sensitivity``, ``max_rank``, ``tags``, ``call_count``, ``tools_called``,
  ``previous_tool``: what no new session sheds) and ``session``, the same facts for this
  session alone.
* ``phase1``: the origin gateway's shapes, ``cMCP::Principal{session_id, workflow_id}``,
  ``cMCP::Resource{tool_name}``, action ``call_tool`` with context
  ``{session_max_sensitivity, workflow_id}``; ``session_max_sensitivity`` is the principal's,
  so an origin policy's taint rule cannot be shed with a new session either. It decides tools
  only: any other method is denied (``METHOD_NOT_IN_MODEL``).

Policies are validated against the bundle schema at load (:mod:`cmcp_core.validation`); at
request time the enclave builds every entity and context itself, so requests are evaluated
without re-validating against the schema (faster, and arguments may carry keys the schema does
not name). Any evaluation error denies and names the policy, because Cedar skips an erroring
policy and a ``forbid`` that errors would otherwise let a broad ``permit`` through.

Scope index: a policy whose scope pins the resource (``resource == Tool::"x"``, ``is``) or the
action can only apply to that tool / action; Cedar checks the scope before the condition, so
such a policy is never satisfied and never errors for other requests. The engine therefore
evaluates each (action, tool) against the subset of policies whose scope admits it, built once
on first use (same policy ids, so decisions name policies exactly as the full set would).
Anything the index does not understand is kept, so the subset is never smaller than sound.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy
import orjson

from cmcp_core.bundle import Bundle, catalog_key, template_pattern
from cmcp_core.errors import CmcpError, Code
from cmcp_core.identity import Identity
from cmcp_core.mcp_target import LOGGING, METHOD_KINDS, PROMPT, RESOURCE, SERVER, TOOL, completion_ref
from cmcp_core.validation import (
    MAX_ARGUMENT_BYTES,
    argument_limit,
    combined_policy_text,
    policy_labels,
    request_model,
    sensitivity_levels,
)

NAMESPACE = "cMCP"
METHOD_ACTIONS = {
    "tools/call": "call_tool", "tools/list": "list_tools",
    "resources/read": "read_resource", "resources/subscribe": "subscribe_resource",
    "resources/unsubscribe": "unsubscribe_resource", "resources/list": "list_resources",
    "resources/templates/list": "list_resources",
    "prompts/get": "get_prompt", "prompts/list": "list_prompts",
    "completion/complete": "complete", "logging/setLevel": "set_log_level",
    # an upstream's input request to the agent, on the tool, resource or prompt whose request asked
    "sampling/createMessage": "sample", "elicitation/create": "elicit", "roots/list": "list_roots",
}
ENTITY_TYPES = {TOOL: "Tool", RESOURCE: "Resource", PROMPT: "Prompt", SERVER: "Server"}
_NOT_IN_CATALOG = {TOOL: Code.TOOL_NOT_IN_CATALOG, RESOURCE: Code.RESOURCE_NOT_IN_CATALOG,
                   PROMPT: Code.PROMPT_NOT_IN_CATALOG}

MAX_ARG_DEPTH = 32
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
_RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
_ERROR_POLICY = re.compile(r"policy `([^`]+)`")
MAX_INDEXED_SETS = 4096
MAX_AGENT_ENTITIES = 1024  # principals' entity sets kept built (one per verified identity)


def _admits(scope: Any, entity_type: str, entity_id: str) -> bool:
    """Could a policy with this scope constraint match ``entity_type::entity_id``?

    Exact for ``All``, ``==``, ``is`` and ``in`` over entities without parents (tools and actions
    carry none at request time); any other shape is kept (``True``) to stay sound.
    """
    if not isinstance(scope, dict):
        return True
    op = scope.get("op")
    if op == "All":
        return True
    if op in ("==", "in") and isinstance(scope.get("entity"), dict):
        ent = scope["entity"]
        return bool(ent.get("type") == entity_type and ent.get("id") == entity_id)
    if op == "in" and isinstance(scope.get("entities"), list):
        return any(isinstance(e, dict) and e.get("type") == entity_type and e.get("id") == entity_id
                   for e in scope["entities"])
    if op == "is" and "in" not in scope:
        return bool(scope.get("entity_type") == entity_type)
    return True


def action_name(method: str) -> str:
    """MCP method (``tools/call``) or action name (``call_tool``) to the Cedar action id."""
    return METHOD_ACTIONS.get(method, method)


def cedar_value(value: Any, depth: int = 0) -> Any:
    """Arguments as Cedar JSON: nulls dropped, floats and huge ints as strings, lists as sets.

    Cedar's JSON reads objects keyed ``__entity`` / ``__extn`` as entity references or
    extension values; arguments come from the agent, so such keys are refused, never passed.
    """
    if depth > MAX_ARG_DEPTH:
        raise CmcpError(Code.ARGS_INVALID, f"arguments nest deeper than {MAX_ARG_DEPTH}")
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if I64_MIN <= value <= I64_MAX else str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, list):
        return [cedar_value(v, depth + 1) for v in value if v is not None]
    if isinstance(value, dict):
        bad = _RESERVED_KEYS.intersection(value)
        if bad:
            raise CmcpError(Code.ARGS_INVALID, f"argument key {sorted(bad)[0]!r} is reserved")
        return {str(k): cedar_value(v, depth + 1) for k, v in value.items() if v is not None}
    raise CmcpError(Code.ARGS_INVALID, f"unsupported argument type {type(value).__name__}")


@dataclass(frozen=True)
class StateFacts:
    """Taint, sensitivity and budget facts, of a principal (windowed) or of one session."""

    max_sensitivity: str
    max_rank: int
    tags: frozenset[str]
    call_count: int
    tools_called: frozenset[str]
    previous_tool: str

    def to_context(self) -> dict[str, Any]:
        return {"max_sensitivity": self.max_sensitivity, "max_rank": self.max_rank,
                "tags": sorted(self.tags), "call_count": self.call_count,
                "tools_called": sorted(self.tools_called), "previous_tool": self.previous_tool}


@dataclass(frozen=True)
class SessionView:
    """What a request model may show Cedar (a snapshot, never the live objects)."""

    session_id: str
    principal: StateFacts
    session: StateFacts
    identity: Identity | None = None  # what the agent's verified token proves (None: development mode)


@dataclass(frozen=True)
class Evaluation:
    allowed: bool
    policy_ids: list[str]  # determining policies, as "file#name"
    errors: list[dict[str, str]]  # [{"policy_id", "message"}]


class CedarEngine:
    """Everything parsed once per bundle; :meth:`evaluate` is the per-call hot path."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.model = request_model(bundle)
        self.levels = sensitivity_levels(bundle)
        self.ranks = {label: rank for rank, label in enumerate(self.levels)}
        self.catalog = bundle.catalog_by_tool()
        # every catalog entry by (kind, name): what a decision's resource entity is made of
        self.entries = {catalog_key(entry): entry for entry in bundle.catalog}
        self._templates = [(template_pattern(name), name) for (kind, name), entry in self.entries.items()
                           if kind == RESOURCE and "resource_template" in entry]
        self._tags = {key: self._compute_tags(key) for key in self.entries}
        self._argument_limits = {name: argument_limit(entry) for name, entry in self.catalog.items()}
        try:
            self.labels = policy_labels(bundle)
            text = combined_policy_text(bundle)
            self.policies = cedarpy.PolicySet.from_str(text)
            self._est: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
            self.entities = cedarpy.Entities.from_json_str(json.dumps(self._catalog_entities()))
        except (ValueError, KeyError) as exc:
            raise CmcpError(Code.BUNDLE_INVALID, f"bundle does not load into Cedar: {exc}") from exc
        self._indexed: dict[tuple[str, str, str], Any] = {}
        self._agents: dict[Identity, Any] = {}
        self._scopes = {key: frozenset(entry.get("required_scopes", ()))
                        for key, entry in self.entries.items()}

    def entity_type(self, kind: str) -> str:
        if self.model == "phase1":
            return f"{NAMESPACE}::Resource"
        return f"{NAMESPACE}::{ENTITY_TYPES[kind]}"

    def policies_for(self, action: str, tool: str, kind: str = TOOL) -> Any:
        """The pre-parsed subset of policies whose scope admits ``action`` on ``tool`` (of ``kind``)."""
        key = (action, kind, tool)
        found = self._indexed.get(key)
        if found is None:
            entity_type = self.entity_type(kind)
            subset = {pid: pol for pid, pol in self._est.items()
                      if _admits(pol.get("action"), f"{NAMESPACE}::Action", action)
                      and _admits(pol.get("resource"), entity_type, tool)}
            found = cedarpy.PolicySet.from_json_str(json.dumps(
                {"staticPolicies": subset, "templates": {}, "templateLinks": []}))
            if len(self._indexed) < MAX_INDEXED_SETS:
                self._indexed[key] = found
        return found

    def resolve(self, method: str, name: str, arguments: Mapping[str, Any]) -> tuple[str, str]:
        """The catalog entry ``(kind, name)`` a request to ``method`` on ``name`` acts on: a
        tool, a resource by its URI or the first template that matches it, a prompt, or the
        server's logging. ``*_NOT_IN_CATALOG`` (the catalog is the allowlist) or
        ``METHOD_NOT_IN_MODEL`` (``phase1`` decides tools only) as a ``CmcpError``."""
        kind = METHOD_KINDS.get(method)
        if method == "completion/complete":
            kind, named = completion_ref(arguments.get("ref"))
            if named != name:
                raise CmcpError(Code.ARGS_INVALID, "the completion's ref names another target")
        if kind is None or (kind != TOOL and self.model == "phase1"):
            raise CmcpError(Code.METHOD_NOT_IN_MODEL,
                            f"the {self.model} request model decides no {method!r} requests")
        if kind == SERVER and name == LOGGING:
            return SERVER, LOGGING
        if kind == SERVER:  # a listen stream is judged on each resource it follows
            raise CmcpError(Code.METHOD_NOT_IN_MODEL, f"{method!r} on {name!r} has no catalog entry")
        if (kind, name) in self.entries:
            return kind, name
        if kind == RESOURCE:
            for pattern, template in self._templates:
                if pattern.fullmatch(name):
                    return RESOURCE, template
        raise CmcpError(_NOT_IN_CATALOG[kind], f"{kind} {name!r} is not in the measured catalog")

    def tool_rank(self, tool: str, kind: str = TOOL) -> tuple[str, int]:
        """The sensitivity label and rank of a catalog entry (the lowest for the server's logging)."""
        entry = self.entries.get((kind, tool), {})
        label = str(entry.get("sensitivity_level", self.levels[0]))
        return label, self.ranks.get(label, len(self.levels) - 1)  # unknown label: treat as highest

    def argument_limit(self, tool: str) -> int:
        """The bundle's bound on ``tool``'s JSON arguments (the ceiling for a tool outside the
        catalog, which is denied anyway, signed and audited, and for every other method)."""
        return self._argument_limits.get(tool, MAX_ARGUMENT_BYTES)

    def required_scopes(self, tool: str, kind: str = TOOL) -> frozenset[str]:
        """The scopes an agent's token must carry for this entry (catalog ``required_scopes``)."""
        return self._scopes.get((kind, tool), frozenset())

    def tool_tags(self, tool: str, kind: str = TOOL) -> frozenset[str]:
        """Taint tags a request to this entry adds: its ``tags`` plus its compliance domain."""
        return self._tags.get((kind, tool), frozenset())

    def _compute_tags(self, key: tuple[str, str]) -> frozenset[str]:
        entry = self.entries[key]
        tags = {str(t).lower() for t in entry.get("tags", []) if isinstance(t, str)}
        domain = entry.get("compliance_domain")
        if isinstance(domain, str) and domain:
            tags.add(domain.lower())
        return frozenset(tags)

    def _catalog_entities(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.model == "phase1":
            return [{"uid": {"type": f"{NAMESPACE}::Resource", "id": name},
                     "attrs": {"tool_name": name}, "parents": []} for name in self.catalog]
        for (kind, name), entry in self.entries.items():
            label, rank = self.tool_rank(name, kind)
            out.append({
                "uid": {"type": self.entity_type(kind), "id": name},
                "attrs": {
                    "name": name,
                    "server": str(entry.get("server", "")),
                    "sensitivity": label,
                    "sensitivity_rank": rank,
                    "compliance_domain": str(entry.get("compliance_domain", "")),
                    "destination": str(entry.get("destination", "internal")),
                    "tags": sorted(self.tool_tags(name, kind)),
                },
                "parents": [],
            })
        out.append({"uid": {"type": self.entity_type(SERVER), "id": LOGGING}, "attrs": {"name": LOGGING},
                    "parents": []})
        return out

    def _request(self, method: str, principal: str, tool: str, arguments: Mapping[str, Any],
                 session: SessionView, entry: tuple[str, str] | None = None) -> dict[str, Any]:
        """``entry``: the catalog entry acted on (:meth:`resolve`); default the tool ``tool``."""
        action = {"type": f"{NAMESPACE}::Action", "id": action_name(method)}
        if self.model == "phase1":
            return {
                "principal": {"type": f"{NAMESPACE}::Principal", "id": session.session_id},
                "action": action,
                "resource": {"type": f"{NAMESPACE}::Resource", "id": tool},
                "context": {"session_max_sensitivity": session.principal.max_sensitivity,
                            "workflow_id": principal},
            }
        kind, name = entry or (TOOL, tool)
        context = {
            "arguments": cedar_value(dict(arguments)),
            **session.principal.to_context(),
            "session": session.session.to_context(),
        }
        if kind == RESOURCE:
            context["uri"] = tool  # the URI asked for; the entity may be a template that matched it
        return {
            "principal": {"type": f"{NAMESPACE}::Agent", "id": principal},
            "action": action,
            "resource": {"type": self.entity_type(kind), "id": name},
            "context": context,
        }

    def _entities_for(self, principal: str, session: SessionView) -> Any:
        if self.model != "phase1":
            return self.entities if session.identity is None else self._with_agent(session.identity)
        delta = [{"uid": {"type": f"{NAMESPACE}::Principal", "id": session.session_id},
                  "attrs": {"session_id": session.session_id, "workflow_id": principal},
                  "parents": []}]
        return self.entities.with_added_json_str(json.dumps(delta))

    def _with_agent(self, identity: Identity) -> Any:
        """The tools plus ``cMCP::Agent::"<principal>"`` carrying what its token proves (built once
        per identity: a token's identity is the same object while it is cached)."""
        found = self._agents.get(identity)
        if found is None:
            agent = [{"uid": {"type": f"{NAMESPACE}::Agent", "id": identity.principal},
                      "attrs": identity.attributes(), "parents": []}]
            found = self.entities.with_added_json_str(json.dumps(agent))
            if len(self._agents) >= MAX_AGENT_ENTITIES:
                self._agents.clear()
            self._agents[identity] = found
        return found

    def evaluate(self, method: str, principal: str, tool: str, arguments: Mapping[str, Any],
                 session: SessionView, entry: tuple[str, str] | None = None) -> Evaluation:
        request = self._request(method, principal, tool, arguments, session, entry)
        kind, name = entry or (TOOL, tool)
        # cedarpy accepts the context as JSON text; orjson writes it faster than cedarpy's json.dumps
        # (a TypeError is not reachable with cedar_value output: then cedarpy serialises the dict)
        with contextlib.suppress(TypeError):
            request["context"] = orjson.dumps(request["context"]).decode()
        result = cedarpy.is_authorized(request, self.policies_for(action_name(method), name, kind),
                                       self._entities_for(principal, session))
        return self._evaluation(result)

    def evaluate_many(self, method: str, principal: str, tools: list[str],
                      session: SessionView, kind: str = TOOL) -> list[Evaluation]:
        """One list action on many catalog entries of ``kind`` (a list result, filtered)."""
        requests = [self._request(method, principal, t, {}, session, (kind, t)) for t in tools]
        results = cedarpy.is_authorized_batch(requests, self.policies,
                                              self._entities_for(principal, session))
        return [self._evaluation(r) for r in results]

    def _evaluation(self, result: cedarpy.AuthzResult) -> Evaluation:
        errors = []
        for message in result.diagnostics.errors:
            match = _ERROR_POLICY.search(message)
            pid = self.labels.get(match.group(1), match.group(1)) if match else ""
            errors.append({"policy_id": pid, "message": message})
        policy_ids = [self.labels.get(p, p) for p in result.diagnostics.reasons]
        return Evaluation(allowed=result.allowed and not errors, policy_ids=policy_ids, errors=errors)
