"""Kubernetes-style status conditions (API conventions): one entry per type, and a
``lastTransitionTime`` that moves only when ``status`` actually changes, so that
re-running a reconcile never looks like a transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None -> "Unknown"
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge_conditions(existing: list[dict[str, Any]] | None, updates: list[Condition], *,
                     generation: int | None, now: str | None = None) -> list[dict[str, Any]]:
    """Apply ``updates`` over ``existing``; keeps unknown types, preserves transition times."""
    stamp = now or now_rfc3339()
    by_type = {str(c.get("type")): dict(c) for c in (existing or []) if isinstance(c, dict)}
    for cond in updates:
        old = by_type.get(cond.type)
        transition = stamp
        if old is not None and old.get("status") == cond.status_text and old.get("lastTransitionTime"):
            transition = str(old["lastTransitionTime"])
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status_text,
            "reason": cond.reason,
            "message": cond.message[:1024],
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[cond.type] = entry
    return list(by_type.values())


def transitions(before: list[dict[str, Any]] | None, after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions whose status differs from before: what deserves an Event."""
    old = {str(c.get("type")): c.get("status") for c in (before or [])}
    return [c for c in after if old.get(str(c.get("type"))) != c.get("status")]


def get_condition(conditions: list[dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None
