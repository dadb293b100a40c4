"""``cmcp_core.logs``: one JSON object per line on stderr, extra fields kept, exceptions included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cmcp_core.logs import JsonFormatter, setup


@pytest.fixture
def restore_cmcp_logger() -> Iterator[None]:
    logger = logging.getLogger("cmcp")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    switches = {name: getattr(logging, name) for name in ("_srcfile", "logThreads", "logProcesses",
                                                          "logMultiprocessing")}
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    for name, value in switches.items():
        setattr(logging, name, value)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("cmcp.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_format_is_one_json_object_with_extras() -> None:
    line = JsonFormatter().format(_record("hello %s", "world", call_id="c1", count=2, obj=object()))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "hello world" and doc["level"] == "WARNING" and doc["logger"] == "cmcp.test"
    assert doc["call_id"] == "c1" and doc["count"] == 2
    assert doc["obj"].startswith("<object")  # unknown types are stringified, never a crash
    assert isinstance(doc["ts"], float)
    assert not {"args", "msecs", "pathname", "exc_info"} & set(doc)  # standard attributes stay out


def test_exception_is_included() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("cmcp", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in doc["exc"]


def test_setup_sends_cmcp_loggers_to_stderr_as_json(
    restore_cmcp_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("WARNING")
    setup("WARNING")  # idempotent: still one handler
    assert len(logging.getLogger("cmcp").handlers) == 1
    child = logging.getLogger("cmcp.gateway")
    child.info("dropped")
    child.warning("kept", extra={"session_id": "s9"})
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["kept"]
    assert json.loads(lines[0])["session_id"] == "s9"
    assert logging.getLogger("cmcp").propagate is False


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_setup_stops_records_gathering_what_no_line_shows(
    restore_cmcp_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caller frame, thread and process cost half a record and never reach a line: not gathered."""
    setup("INFO")
    kept = _Kept()
    logging.getLogger("cmcp").addHandler(kept)
    logging.getLogger("cmcp.gateway").info("call forwarded", extra={"call_id": "c1"})
    (record,) = kept.records
    assert (record.funcName, record.lineno) == ("(unknown function)", 0)
    assert record.thread is None and record.process is None and record.processName is None
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["call_id"] == "c1"
