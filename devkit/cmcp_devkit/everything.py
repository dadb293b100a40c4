"""The "everything" upstream: an ``mcp`` SDK server with every feature the MCP conformance suite's
server scenarios exercise, for running the official suite against an upstream directly and
through the gateway (:mod:`cmcp_devkit.mcp_conformance` runs the suite).

It serves streamable HTTP at ``/mcp`` and answers in SSE by default (``--json`` for plain JSON
responses), with an in-memory event store and a short retry interval so the SSE polling and
resumption scenarios (SEP-1699) see priming events, ``retry`` fields and a resumed stream. Bound
to a loopback host it keeps the SDK's DNS-rebinding protection (Host/Origin allow-list), which the
``dns-rebinding-protection`` scenario checks.

Names are stable (policy tests refer to them):

Tools (the suite's names): ``test_simple_text``, ``test_image_content``, ``test_audio_content``,
``test_embedded_resource``, ``test_multiple_content_types``, ``test_tool_with_logging`` (three
``info`` log notifications), ``test_tool_with_progress`` (progress 0, 50, 100 of 100),
``test_error_handling`` (``isError``), ``test_sampling(prompt)`` (``sampling/createMessage``),
``test_elicitation(message)``, ``test_elicitation_sep1034_defaults``,
``test_elicitation_sep1330_enums`` (``elicitation/create``), ``json_schema_2020_12_tool`` (a JSON
Schema 2020-12 ``inputSchema``), ``test_reconnection`` (closes its SSE stream mid-call).

Resources: ``test://static-text``, ``test://static-binary`` (PNG), ``test://watched-resource``
(subscribable), the template ``test://template/{id}/data``; and the sensitive ones a policy should
deny: :data:`PATIENT_RECORD` ``ehr://patients/p-0042/record`` (a fictitious patient's record, PHI)
and the template :data:`PATIENT_RECORD_TEMPLATE` ``ehr://patients/{patient_id}/record``.

Prompts: ``test_simple_prompt``, ``test_prompt_with_arguments(arg1, arg2)``,
``test_prompt_with_embedded_resource(resourceUri)``, ``test_prompt_with_image``.

Also: ``completion/complete`` (prefix matches for the prompt's and the templates' arguments),
``logging/setLevel``, ``resources/subscribe`` and ``resources/unsubscribe``. Tool executions,
resource reads and prompt gets are counted in a :class:`~cmcp_devkit.serving.CallCounter` served
at ``GET /calls``, as for :mod:`cmcp_devkit.upstream`.

Process: ``python -m cmcp_devkit.everything --listen 127.0.0.1:0 [--json]`` prints
``READY <mcp url> everything``. In process: ``async with run_everything() as up: up.url``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.resolve import Elicit, Resolve, Sample
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import (
    AudioContent,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    CreateMessageResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    JSONRPCMessage,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from cmcp_devkit.ports import free_port
from cmcp_devkit.serving import (
    CallCounter,
    counted_app,
    parse_listen,
    run_until_stopped,
    server_config,
    serving,
)

__all__ = [
    "AUDIO_WAV",
    "JSON_SCHEMA_2020_12_TOOL",
    "PATIENT_RECORD",
    "PATIENT_RECORD_TEMPLATE",
    "PNG_1X1_BASE64",
    "PROMPTS",
    "RESOURCES",
    "RESOURCE_TEMPLATES",
    "SENSITIVE_RESOURCES",
    "TOOLS",
    "WATCHED",
    "BoundedEventStore",
    "EverythingState",
    "RunningEverything",
    "build_app",
    "build_server",
    "run_everything",
]

SERVER_NAME = "cmcp-everything-upstream"

# A 1x1 PNG and a minimal WAV (the suite checks the MIME types and that data is base64).
PNG_1X1_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
AUDIO_WAV = bytes.fromhex(
    "524946462600000057415645666d74201000000001000100401f0000803e0000020010006461746102000000" "0000"
)

JSON_SCHEMA_2020_12_TOOL = "json_schema_2020_12_tool"
TOOLS: tuple[str, ...] = (
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_tool_with_logging",
    "test_tool_with_progress",
    "test_error_handling",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    JSON_SCHEMA_2020_12_TOOL,
    "test_reconnection",
)

STATIC_TEXT = "test://static-text"
STATIC_BINARY = "test://static-binary"
WATCHED = "test://watched-resource"
TEMPLATE = "test://template/{id}/data"
PATIENT_RECORD = "ehr://patients/p-0042/record"
PATIENT_RECORD_TEMPLATE = "ehr://patients/{patient_id}/record"
RESOURCES: tuple[str, ...] = (STATIC_TEXT, STATIC_BINARY, WATCHED, PATIENT_RECORD)
RESOURCE_TEMPLATES: tuple[str, ...] = (TEMPLATE, PATIENT_RECORD_TEMPLATE)
SENSITIVE_RESOURCES: tuple[str, ...] = (PATIENT_RECORD, PATIENT_RECORD_TEMPLATE)

PROMPTS: tuple[str, ...] = (
    "test_simple_prompt",
    "test_prompt_with_arguments",
    "test_prompt_with_embedded_resource",
    "test_prompt_with_image",
)

# JSON Schema 2020-12 keywords the ``json-schema-2020-12`` scenario expects to survive tools/list.
JSON_SCHEMA_2020_12_INPUT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}

# Values completion/complete offers, by argument name (prefix-filtered).
COMPLETIONS: dict[str, tuple[str, ...]] = {
    "arg1": ("paris", "park", "party", "test-value"),
    "arg2": ("alpha", "beta", "gamma"),
    "id": ("1", "42", "123"),
    "patient_id": ("p-0042", "p-0017"),
    "resourceUri": (STATIC_TEXT, WATCHED),
}


def _patient_record(patient_id: str) -> str:
    """A fictitious patient record: realistic PHI shape, invented values."""
    return json.dumps(
        {
            "patient_id": patient_id,
            "name": "Maria Jensen",
            "date_of_birth": "1978-02-11",
            "mrn": "MRN-0042-7731",
            "diagnoses": ["E11.9 type 2 diabetes mellitus", "I10 essential hypertension"],
            "medications": ["metformin 500 mg twice daily", "lisinopril 10 mg daily"],
            "allergies": ["penicillin"],
        }
    )


class BoundedEventStore(EventStore):
    """In-memory event store for SSE resumption (``Last-Event-ID``); keeps the newest ``limit`` events."""

    def __init__(self, limit: int = 10_000) -> None:
        self._events: deque[tuple[StreamId, EventId, JSONRPCMessage | None]] = deque(maxlen=limit)
        self._next = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next += 1
        event_id = str(self._next)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        after = int(last_event_id)
        for s, e, message in list(self._events):
            if s == stream and int(e) > after and message is not None:  # None: a priming event
                await send_callback(EventMessage(message, e))
        return stream


class ListenBus(InMemorySubscriptionBus):
    """The SDK's in-process bus, counting the listen streams open on it (what tests check)."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = 0

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listening += 1
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                self.listening -= 1
            unsubscribe()

        return once


@dataclass
class EverythingState:
    """What the server remembers across requests: subscriptions and the last log level set, and
    the bus its 2026-07-28 ``subscriptions/listen`` streams hear resource updates on."""

    subscriptions: set[str] = field(default_factory=set)
    log_level: str | None = None
    bus: ListenBus = field(default_factory=ListenBus)

    async def touch(self, uri: str) -> None:
        """Say ``uri`` changed: every listen stream subscribed to it gets ``resources/updated``."""
        await self.bus.publish(ResourceUpdated(uri=uri))


class UserResponse(BaseModel):
    """What ``test_elicitation`` asks for (the schema the ``tools-call-elicitation`` scenario describes)."""

    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Sep1034Defaults(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


class Sep1330Enums(BaseModel):
    """SEP-1330: the five enum shapes (untitled/titled single and multi select, legacy enumNames)."""

    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["option1", "option2", "option3"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options",
        json_schema_extra={
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ]
        },
    )
    legacyEnum: str = Field(
        description="Legacy titled enum",
        json_schema_extra={
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titles",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            }
        },
    )


# The interactive tools ask through resolvers, so the SDK asks in the era the client speaks:
# a standalone request on the call's stream (<= 2025-11-25) or an InputRequiredResult the
# client answers by retrying the call (2026-07-28). Each body runs once, with the answer.
def ask_llm(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
                  max_tokens=100)


def ask_user(message: str) -> Elicit[UserResponse]:
    return Elicit(message, UserResponse)


def ask_defaults() -> Elicit[Sep1034Defaults]:
    return Elicit("Please provide user information", Sep1034Defaults)


def ask_enums() -> Elicit[Sep1330Enums]:
    return Elicit("Please select values using different enum schema types", Sep1330Enums)


def _elicited(answer: ElicitationResult[Any]) -> str:
    return answer.data.model_dump_json() if isinstance(answer, AcceptedElicitation) else "{}"


def _tools(server: MCPServer, counter: CallCounter) -> None:
    @server.tool()
    def test_simple_text() -> str:
        """Returns one text part."""
        counter["test_simple_text"] += 1
        return "This is a simple text response for testing."

    @server.tool()
    def test_image_content() -> list[ImageContent]:
        """Returns one image part (PNG)."""
        counter["test_image_content"] += 1
        return [ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png")]

    @server.tool()
    def test_audio_content() -> list[AudioContent]:
        """Returns one audio part (WAV)."""
        counter["test_audio_content"] += 1
        return [AudioContent(type="audio", data=base64.b64encode(AUDIO_WAV).decode(), mime_type="audio/wav")]

    @server.tool()
    def test_embedded_resource() -> list[EmbeddedResource]:
        """Returns one embedded text resource."""
        counter["test_embedded_resource"] += 1
        return [
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://embedded-resource", mime_type="text/plain",
                    text="This is an embedded resource content.",
                ),
            )
        ]

    @server.tool()
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Returns a text, an image and an embedded resource part."""
        counter["test_multiple_content_types"] += 1
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text='{"test": "data", "value": 123}',
                ),
            ),
        ]

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log notifications while it runs."""
        counter["test_tool_with_logging"] += 1
        steps = ("Tool execution started", "Tool processing data", "Tool execution completed")
        for i, text in enumerate(steps):
            if i:
                await asyncio.sleep(0.05)
            await ctx.log("info", text)
        return "Tool with logging executed successfully"

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50 and 100 of 100 (when the call carries a progress token)."""
        counter["test_tool_with_progress"] += 1
        for i, step in enumerate((0, 50, 100)):
            if i:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        meta = ctx.request_context.meta
        return str(meta.get("progress_token", 0) if meta else 0)

    @server.tool()
    def test_error_handling() -> str:
        """Always fails: the result carries isError."""
        counter["test_error_handling"] += 1
        raise RuntimeError("This tool intentionally returns an error for testing")

    @server.tool()
    async def test_sampling(prompt: str, answer: Annotated[CreateMessageResult, Resolve(ask_llm)]) -> str:
        """Asks the client's LLM (sampling/createMessage) and returns its answer."""
        counter["test_sampling"] += 1
        text = answer.content.text if answer.content.type == "text" else "(no text)"
        return f"LLM response: {text}"

    @server.tool()
    async def test_elicitation(
        message: str, answer: Annotated[ElicitationResult[UserResponse], Resolve(ask_user)]
    ) -> str:
        """Asks the user (elicitation/create) and returns the answer."""
        counter["test_elicitation"] += 1
        return f"User response: action={answer.action}, content={_elicited(answer)}"

    @server.tool()
    async def test_elicitation_sep1034_defaults(
        answer: Annotated[ElicitationResult[Sep1034Defaults], Resolve(ask_defaults)],
    ) -> str:
        """Elicitation whose schema has a default for every primitive type (SEP-1034)."""
        counter["test_elicitation_sep1034_defaults"] += 1
        return f"Elicitation completed: action={answer.action}, content={_elicited(answer)}"

    @server.tool()
    async def test_elicitation_sep1330_enums(
        answer: Annotated[ElicitationResult[Sep1330Enums], Resolve(ask_enums)],
    ) -> str:
        """Elicitation with the five enum schema shapes (SEP-1330)."""
        counter["test_elicitation_sep1330_enums"] += 1
        return f"Elicitation completed: action={answer.action}, content={_elicited(answer)}"

    @server.tool(name=JSON_SCHEMA_2020_12_TOOL, description="Tool with JSON Schema 2020-12 features")
    def json_schema_tool(name: str = "", address: dict[str, str] | None = None) -> str:
        counter[JSON_SCHEMA_2020_12_TOOL] += 1
        return f"received {name or 'nothing'}"

    # The SDK derives inputSchema from the signature; the scenario wants $schema, $defs and
    # additionalProperties as written. No public override exists in mcp 2.3, so set the listed
    # schema on the registered tool (arguments are still validated against the signature).
    tool = server._tool_manager.get_tool(JSON_SCHEMA_2020_12_TOOL)
    assert tool is not None
    tool.parameters = JSON_SCHEMA_2020_12_INPUT

    @server.tool()
    async def test_reconnection(ctx: Context) -> str:
        """Closes its SSE stream mid-call; the client resumes with Last-Event-ID (SEP-1699)."""
        counter["test_reconnection"] += 1
        await ctx.log("info", "Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)  # the client reconnects after the retry interval
        await ctx.log("info", "After reconnect")
        return "Reconnection test completed"


def _resources(server: MCPServer, counter: CallCounter) -> None:
    @server.resource(STATIC_TEXT, name="static-text", description="A static text", mime_type="text/plain")
    def static_text() -> str:
        counter[STATIC_TEXT] += 1
        return "This is the content of the static text resource."

    @server.resource(STATIC_BINARY, name="static-binary", description="A static PNG", mime_type="image/png")
    def static_binary() -> bytes:
        counter[STATIC_BINARY] += 1
        return base64.b64decode(PNG_1X1_BASE64)

    @server.resource(TEMPLATE, name="template-data", description="Data for an id",
                     mime_type="application/json")
    def template_data(id: str) -> str:
        counter[TEMPLATE] += 1
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(WATCHED, name="watched-resource", description="Subscribable", mime_type="text/plain")
    def watched() -> str:
        counter[WATCHED] += 1
        return "Watched resource content"

    @server.resource(
        PATIENT_RECORD, name="patient-record-p-0042", description="Patient record (PHI)",
        mime_type="application/json",
    )
    def patient_record() -> str:
        counter[PATIENT_RECORD] += 1
        return _patient_record("p-0042")

    @server.resource(
        PATIENT_RECORD_TEMPLATE, name="patient-record", description="A patient's record (PHI)",
        mime_type="application/json",
    )
    def patient_record_by_id(patient_id: str) -> str:
        counter[PATIENT_RECORD_TEMPLATE] += 1
        return _patient_record(patient_id)


def _prompts(server: MCPServer, counter: CallCounter) -> None:
    @server.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        counter["test_simple_prompt"] += 1
        return [UserMessage(content=TextContent(type="text", text="This is a simple prompt for testing."))]

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        counter["test_prompt_with_arguments"] += 1
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(content=TextContent(type="text", text=text))]

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt that embeds the resource it is given."""
        counter["test_prompt_with_embedded_resource"] += 1
        embedded = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(content=EmbeddedResource(type="resource", resource=embedded)),
            UserMessage(content=TextContent(type="text", text="Please process the embedded resource above.")),
        ]

    @server.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with an image part."""
        counter["test_prompt_with_image"] += 1
        return [
            UserMessage(content=ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png")),
            UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
        ]


def _protocol_handlers(server: MCPServer, counter: CallCounter, state: EverythingState) -> None:
    async def complete(ctx: ServerRequestContext[Any], params: CompleteRequestParams) -> CompleteResult:
        counter["completion/complete"] += 1
        argument = params.argument
        values = [v for v in COMPLETIONS.get(argument.name, ()) if v.startswith(argument.value)]
        return CompleteResult(completion=Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        state.log_level = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        state.subscriptions.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
        state.subscriptions.discard(str(params.uri))
        return EmptyResult()

    # MCPServer (mcp 2.3) has no decorators for the last three (and an untyped one for completion);
    # the low-level server registers them and advertises completions, logging and
    # resources.subscribe because they are served.
    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def build_server() -> tuple[MCPServer, CallCounter, EverythingState]:
    """The everything server, the counter its tools, reads and prompts increment, and its state."""
    state = EverythingState()
    # WARNING: see cmcp_devkit.upstream
    server = MCPServer(SERVER_NAME, log_level="WARNING", subscriptions=state.bus)
    counter = CallCounter()
    _tools(server, counter)
    _resources(server, counter)
    _prompts(server, counter)
    _protocol_handlers(server, counter, state)
    return server, counter, state


RETRY_INTERVAL_MS = 100  # the SSE ``retry`` field: the polling scenario reconnects after it


def build_app(
    *, host: str = "127.0.0.1", json_response: bool = False, guard: Any = None
) -> tuple[ASGIApp, CallCounter, EverythingState]:
    """The streamable-HTTP app (``/mcp``, plus ``GET /calls``), behind ``guard`` (a
    ``cmcp_guard`` Guard) when given.

    ``host`` is where it is bound: on a loopback host the SDK turns on its DNS-rebinding
    protection (only loopback Host/Origin accepted)."""
    server, counter, state = build_server()
    app = counted_app(
        server, counter, guard, json_response=json_response, event_store=BoundedEventStore(),
        retry_interval=RETRY_INTERVAL_MS, host=host,
    )
    return app, counter, state


@dataclass
class RunningEverything:
    url: str
    counter: CallCounter
    state: EverythingState
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def run_everything(
    *, host: str = "127.0.0.1", port: int | None = None, json_response: bool = False, guard: Any = None
) -> AsyncIterator[RunningEverything]:
    """The everything server in this event loop; ``up.url`` is its MCP endpoint."""
    app, counter, state = build_app(host=host, json_response=json_response, guard=guard)
    port = port or free_port()
    async with serving(server_config(app, host, port)) as server:
        yield RunningEverything(url=f"http://{host}:{port}/mcp", counter=counter, state=state, server=server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmcp-devkit-everything", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--json", action="store_true", help="answer in JSON instead of SSE")
    args = parser.parse_args(argv)
    # mcp 2.3 flags logging and sampling as deprecated from protocol 2026-07-28; the suite's
    # versions still have them, and this server exists to serve them.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    host, port = parse_listen(args.listen)
    app, _, _ = build_app(host=host, json_response=args.json)
    return run_until_stopped(app, f"{host}:{port}", note="everything")


if __name__ == "__main__":
    sys.exit(main())
