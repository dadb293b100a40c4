"""Events (:mod:`cmcp_operator.events`): the production recorder hands plain dicts to Kopf's
real posting queue as references to the object."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kopf._core.engines import posting

from cmcp_operator.events import EventRecorder, KopfEvents, _body

ROUTE: dict[str, Any] = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute",
                         "metadata": {"name": "r", "namespace": "ns", "uid": "u-1"}}


async def test_event_posts_a_reference_to_a_plain_dict() -> None:
    # What Kopf sets up around each handler (in this test's own task context): its event queue,
    # and settings with the posting level handlers.startup chooses.
    q: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    posting.event_queue_var.set(q)
    posting.settings_var.set(settings)
    recorder: EventRecorder = KopfEvents()
    recorder.event(ROUTE, type="Normal", reason="Attested", message="2/2 pods")
    recorder.warn(kopf.Body(ROUTE), reason="RoguePod", message="p1 (BundleHashMismatch)")
    first, second = q.get_nowait(), q.get_nowait()
    assert (first.type, first.reason, first.message) == ("Normal", "Attested", "2/2 pods")
    assert first.ref == {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "name": "r",
                         "namespace": "ns", "uid": "u-1"}
    assert (second.type, second.reason, second.ref["name"]) == ("Warning", "RoguePod", "r")
    assert q.empty()


def test_a_kopf_body_is_passed_through_and_a_dict_is_wrapped() -> None:
    body = kopf.Body(ROUTE)
    assert _body(body) is body
    wrapped = _body(ROUTE)
    assert isinstance(wrapped, kopf.Body) and wrapped.metadata.name == "r" and wrapped.metadata.uid == "u-1"
