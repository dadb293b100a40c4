"""A command's usage error is exit 2 with the group named on stderr; its own result passes through."""

from __future__ import annotations

import argparse

import pytest

from cmcp_ctl.usage import UsageError, exit_2_on_usage_error


def test_a_usage_error_exits_2_naming_the_group(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(_args: argparse.Namespace) -> int:
        raise UsageError("--now must be Unix seconds")

    assert exit_2_on_usage_error("verify", refuse)(argparse.Namespace()) == 2
    assert capsys.readouterr().err == "cmcpctl verify: --now must be Unix seconds\n"


def test_the_commands_own_exit_code_passes_through() -> None:
    assert exit_2_on_usage_error("release", lambda _args: 1)(argparse.Namespace()) == 1
    assert exit_2_on_usage_error("release", lambda _args: 0)(argparse.Namespace()) == 0
