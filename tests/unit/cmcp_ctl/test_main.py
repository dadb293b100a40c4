"""``cmcpctl``'s entry point: every command group registers, ``--help`` lists them, usage errors exit 2."""

from __future__ import annotations

import argparse
import importlib

import pytest

from cmcp_ctl.main import COMMAND_MODULES, DESCRIPTION, build_parser, main

GROUPS = ("bundle", "audit", "conformance", "verify", "release", "demo", "dev")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_module_registers_its_group() -> None:
    assert list(_subcommands(build_parser())) == list(GROUPS)
    for name in COMMAND_MODULES:
        assert callable(importlib.import_module(name).register), name


def test_every_group_has_a_func_and_is_in_the_description() -> None:
    for group, sub in _subcommands(build_parser()).items():
        assert callable(sub.get_default("func")), f"`cmcpctl {group}` does nothing"
        assert f"\n  {group} " in DESCRIPTION, f"`cmcpctl --help` does not list {group}"


def test_help_lists_the_groups_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cmcpctl [-h] <command> [flags]")
    for group in GROUPS:
        assert f"\n  {group} " in out
    assert 'Use "cmcpctl <command> --help"' in out


def test_no_command_prints_help_to_stderr_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: cmcpctl")


def test_unknown_command_is_a_parser_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("group", ["audit", "dev", "verify", "bundle"])
def test_a_group_without_its_subcommand_prints_its_help_and_exits_2(
        group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    out, err = capsys.readouterr()
    usage = err.splitlines()[0]
    assert out == "" and usage.startswith("usage: cmcpctl") and f" {group} " in usage
    assert "<subcommand>" in err


@pytest.mark.parametrize("group", ["audit", "bundle", "verify"])
def test_a_groups_usage_line_names_the_group_right_after_cmcpctl(
        group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    assert capsys.readouterr().err.startswith(f"usage: cmcpctl {group} ")
