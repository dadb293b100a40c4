"""An upstream's SSE answer relayed to the agent's stream as it arrives (docs/adr/0016).

Notifications go as they come, then the response (or the coded error that ended the stream). A
multi-round trip's ``InputRequiredResult`` can be held back for the pipeline's
:class:`~cmcp_gateway.pipeline.Conversation`, and a listen stream's frames name the agent's
request as their subscription.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway import jsonrpc
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.upstream import ReplyStream

log = logging.getLogger("cmcp.gateway")
INPUT_REQUIRED = "input_required"


def is_input_required(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == INPUT_REQUIRED


def sse_event(message: bytes) -> bytes:
    return b"event: message\r\ndata: " + message + b"\r\n\r\n"


class Relay:
    """The upstream's stream to the agent's: notifications as they come, then the response (or
    the coded error that ended the stream). :meth:`aclose` (the front calls it whatever happens)
    closes the upstream's stream and, when the agent left before the response, reports
    ``AGENT_GONE`` as the call's outcome."""

    def __init__(self, reply: ReplyStream, finish: Callable[[dict[str, Any]], Any], request_id: str | int,
                 ids: dict[str, str], report_failure: Callable[[str], None], *,
                 hold_input: bool = False, listen: bool = False) -> None:
        self._reply = reply
        self._finish = finish
        self._request_id = request_id
        self._ids = ids
        self._report_failure = report_failure
        self._answered = False
        self._hold_input = hold_input
        self._listen = listen
        # with ``hold_input``: an InputRequiredResult that ended the stream, kept from the agent
        # for the :class:`Conversation` that decides and relays its input requests
        self.input_required: dict[str, Any] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._reply.messages():
                if "id" not in message:
                    if self._listen:
                        _name_subscription(message.get("params"), self._request_id)
                    yield sse_event(orjson.dumps(message))
                    continue
                self._answered = True
                try:
                    result = self._finish(message)
                except FailedRequest as failed:
                    yield sse_event(failed.response.body)
                    return
                if self._hold_input and is_input_required(result):
                    self.input_required = result
                    return
                if self._listen:
                    _name_subscription(result, self._request_id)
                yield sse_event(jsonrpc.result_body(self._request_id, result))
                return
        except CmcpError as exc:
            self._answered = True
            self._report_failure(str(exc.code))
            log.warning("upstream stream failed", extra={**self._ids, "code": str(exc.code)})
            yield sse_event(jsonrpc.error_body(self._request_id, exc.code, exc.detail, self._ids))

    async def aclose(self) -> None:
        if not self._answered:
            self._answered = True
            self._report_failure(str(Code.AGENT_GONE))
        await self._reply.aclose()


def _name_subscription(holder: Any, request_id: str | int) -> None:
    """A listen stream's frames name the agent's listen request as their subscription, not the
    gateway's request upstream (the agent tells its streams apart by it)."""
    meta = holder.get("_meta") if isinstance(holder, dict) else None
    if isinstance(meta, dict) and SUBSCRIPTION_ID_META_KEY in meta:
        holder["_meta"] = {**meta, SUBSCRIPTION_ID_META_KEY: request_id}
