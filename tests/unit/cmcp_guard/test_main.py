"""``cmcp-guard`` refuses to start with a spent store it cannot use, rather than fall back to memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_guard.main import main

BASE = ["--upstream", "http://127.0.0.1:9", "--audience", "urn:cmcp:test", "--enclave", "127.0.0.1:9"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--spent-store", "postgres://db/spent"],
        ["--spent-store", "sqlite:"],
        ["--permit-ttl-seconds", "0"],
        ["--clock-skew-seconds", "-1"],
    ],
)
def test_unusable_settings_stop_the_guard(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*BASE, *extra])
    assert stopped.value.code == 2
    assert "--" in capsys.readouterr().err


def test_a_sqlite_store_in_a_missing_directory_stops_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*BASE, "--spent-store", f"sqlite:{tmp_path / 'absent' / 'spent.db'}"])
    assert stopped.value.code == 2
    assert "--spent-store" in capsys.readouterr().err
