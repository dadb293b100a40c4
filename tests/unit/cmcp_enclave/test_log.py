"""``cmcp_enclave.log``: one JSON line per event on the ``cmcp.enclave`` logger, at the given level."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cmcp_core import logs
from cmcp_enclave.log import log


@pytest.fixture
def json_stderr() -> Iterator[None]:
    """Put the ``cmcp`` logger back after a test installed the JSON handler on it."""
    logger = logging.getLogger("cmcp")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_event_and_fields_in_one_json_line(json_stderr: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("DEBUG")  # in the test: pytest swaps the captured stderr between setup and call
    log("serving", address="127.0.0.1:1", kid="k1")
    [doc] = _lines(capsys)
    assert doc["event"] == doc["msg"] == "serving"
    assert doc["logger"] == "cmcp.enclave" and doc["level"] == "INFO"
    assert doc["address"] == "127.0.0.1:1" and doc["kid"] == "k1"


@pytest.mark.parametrize(("level", "name"), [("debug", "DEBUG"), ("warning", "WARNING"), ("ERROR", "ERROR")])
def test_level_names(level: str, name: str, json_stderr: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("DEBUG")
    log("x", level=level)
    assert _lines(capsys)[0]["level"] == name


def test_levels_below_the_threshold_are_dropped(
    json_stderr: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("WARNING")
    log("quiet")
    log("loud", level="error")
    assert [d["event"] for d in _lines(capsys)] == ["loud"]
