"""Kubernetes Events, behind a small protocol so the controllers can be tested without Kopf.

Kopf posts Events from a context it sets up around each handler; the controllers only say
what happened, and :class:`KopfEvents` hands it to Kopf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import kopf


class EventRecorder(Protocol):
    def event(self, obj: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...

    def warn(self, obj: Mapping[str, Any], *, reason: str, message: str) -> None: ...


class KopfEvents:
    """The production recorder: Kopf's posting queue (its settings decide what is posted)."""

    def event(self, obj: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        kopf.event(_body(obj), type=type, reason=reason, message=message)

    def warn(self, obj: Mapping[str, Any], *, reason: str, message: str) -> None:
        kopf.warn(_body(obj), reason=reason, message=message)


def _body(obj: Mapping[str, Any]) -> kopf.Body:
    return obj if isinstance(obj, kopf.Body) else kopf.Body(cast(kopf.RawBody, obj))
