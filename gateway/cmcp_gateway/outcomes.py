"""Outcome carrying: one enclave endpoint's queue of ``Complete`` reports.

An allowed call's outcome is queued (cheaply: its digest is computed after the answer went
out) and rides on the next ``Decide`` or ``CloseSession`` to that enclave (``completes``
field), which records it before deciding or closing and says how many it handled
(``completes_handled``); an outcome nothing carries within ``OUTCOME_FLUSH_SECONDS`` goes as
its own ``Complete``. An enclave that does not acknowledge carried outcomes (one that predates
the field) gets them again as ``Complete`` calls and is not given any more to carry. Why they
ride along: docs/adr/0004-outcomes-ride-on-next-decide.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2

log = logging.getLogger("cmcp.gateway")
OUTCOME_FLUSH_SECONDS = 0.02  # an outcome no Decide carried by then is sent on its own
MAX_CARRIED = 64  # outcomes one Decide / CloseSession carries at most

# (session_id, call_id, result or None, error code): an outcome before its digest is computed
RawOutcome = tuple[str, str, Any, str]
# Sends one CompleteRequest on its own; a coded CmcpError when it cannot be delivered.
SendAlone = Callable[[Any], Awaitable[None]]


def outcome_request(session_id: str, call_id: str, result: Any, error_code: str) -> Any:
    """The ``CompleteRequest`` for an upstream result (or a failure code when ``result`` is None)."""
    code, digest, size = error_code, "", 0
    if result is not None:
        try:
            size, digest = len(orjson.dumps(result)), tagged_sha256(canonical(result))
        except (TypeError, ValueError) as exc:  # a result JCS cannot express: report, don't drop
            code = f"unhashable-result:{type(exc).__name__}"
    return enclave_pb2.CompleteRequest(
        session_id=session_id,
        call_id=call_id,
        response_digest=digest,
        response_bytes=size,
        error_code=code,
        is_error=bool(result.get("isError")) if isinstance(result, dict) else False,
    )


def outcome_lost(session_id: str, call_id: str, code: Code) -> None:
    log.warning("complete failed", extra={"call_id": call_id, "session_id": session_id, "code": str(code)})


def _request_lost(request: Any, code: Code) -> None:
    outcome_lost(request.session_id, request.call_id, code)


class OutcomeQueue:
    """The outcomes waiting for one enclave endpoint, and whether that enclave carries them."""

    def __init__(self, send_alone: SendAlone, route_name: str, address: str) -> None:
        self._send_alone = send_alone
        self._where = {"route": route_name, "endpoint": address}  # for the log
        self.raw: list[RawOutcome] = []  # digests not computed yet
        self.ready: list[Any] = []  # CompleteRequests to carry
        self.carries: bool | None = None  # acknowledged carried outcomes?
        self._prepare_armed = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def report(self, session_id: str, call_id: str, result: Any, error_code: str) -> None:
        """Queue an outcome (cheap: its digest is computed on the next loop iteration)."""
        self.raw.append((session_id, call_id, result, error_code))
        if not self._prepare_armed:
            self._prepare_armed = True
            asyncio.get_running_loop().call_soon(self._prepare)

    def _prepare(self) -> None:
        """Compute queued outcomes' digests (after the answer went out) and arm the flush timer."""
        self._prepare_armed = False
        if self.raw:
            raw, self.raw = self.raw, []
            self.ready.extend(outcome_request(*r) for r in raw)
        if self.ready and self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                OUTCOME_FLUSH_SECONDS, self.flush_now
            )

    def take(self, limit: int | None = MAX_CARRIED) -> list[Any]:
        """Remove up to ``limit`` queued outcomes (oldest first) for a carrier to take along."""
        self._prepare()
        if limit is None or len(self.ready) <= limit:
            taken, self.ready = self.ready, []
        else:
            taken, self.ready = self.ready[:limit], self.ready[limit:]
        if not self.ready and self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        return taken

    async def for_carrier(self) -> list[Any]:
        """What the next ``Decide`` carries. Whatever it cannot carry (beyond ``MAX_CARRIED``, or
        everything for an enclave that carries none) goes alone now, and every outcome that went
        alone is stored before this returns: no decision runs ahead of an outcome reported before
        it (the guarantee in docs/ARCHITECTURE.md, "The audit trail"; ADR 0023). The wait is
        bounded by each ``Complete``'s own deadline; one that fails is logged as lost."""
        carried = self.take() if self.carries is not False else []
        if self.ready:
            self.flush_now()
        if self._flushing:  # only those in flight now: later ones hold later outcomes
            await asyncio.gather(*list(self._flushing), return_exceptions=True)
        return carried

    def requeue(self, taken: list[Any]) -> None:
        """The carrier may not have arrived: send these again (the enclave refuses duplicates)."""
        if taken:
            self.ready[:0] = taken
            self._prepare()

    def flush_now(self) -> None:
        """Send what is queued now, each outcome as its own Complete (timer, close, shutdown)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        taken = self.take(None)
        if taken:
            task = asyncio.get_running_loop().create_task(self._send_each(taken))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _send_each(self, outcomes: list[Any]) -> None:
        """Each as its own Complete, concurrently (bounded by one timeout, as the old per-call tasks)."""

        async def one(request: Any) -> None:
            try:
                await self._send_alone(request)
            except CmcpError as exc:
                _request_lost(request, exc.code)

        await asyncio.gather(*(one(r) for r in outcomes))

    def acknowledged(self, carried: list[Any], handled: int) -> None:
        """Did the enclave handle what rode along? If not (it predates ``completes``), resend alone."""
        if not carried:
            return
        if handled == len(carried):
            self.carries = True
            return
        self.carries = False
        log.warning(
            "enclave does not take carried outcomes; sending them as Complete calls", extra=self._where
        )
        self.requeue(carried)

    def closed_without(self, carried: list[Any], handled: int) -> None:
        """A CloseSession that did not record what it carried: those outcomes are lost."""
        if carried and handled != len(carried):  # cannot happen once acknowledged
            for lost in carried:
                _request_lost(lost, Code.SESSION_CLOSED)

    async def settle(self) -> None:
        """Wait for the in-flight flushes."""
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)

    async def abandon(self) -> None:
        """The enclave left the route, so its sessions ended: what is queued is lost."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        await self.settle()
        for request in self.take(None):
            _request_lost(request, Code.SESSION_LOST)
