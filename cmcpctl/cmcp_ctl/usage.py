"""Usage errors of cmcpctl commands: bad flags or unreadable input exit 2, never 1 (a failed check)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


class UsageError(Exception):
    """Bad flags or unreadable input: exit 2, not a verification failure."""


def exit_2_on_usage_error(group: str, func: Callable[[argparse.Namespace], Any]) -> Callable[..., int]:
    """``func`` as a command: its UsageError becomes ``cmcpctl GROUP: message`` on stderr and exit 2."""
    def command(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except UsageError as exc:
            print(f"cmcpctl {group}: {exc}", file=sys.stderr)
            return 2

    return command
