"""cmcp_devkit.cluster.http_echo: the e2e test image's HTTP server (readiness, echo, webhook)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cmcp_devkit.cluster import http_echo
from cmcp_devkit.cluster.http_echo import Handler, Server


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(http_echo._State, "ready", True)
    monkeypatch.setattr(http_echo._State, "fail_file", None)
    monkeypatch.setenv("POD_NAME", "pod-1")
    monkeypatch.setenv("ECHO_GREETING", "hi")
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_echo_names_pod_path_and_echo_env(echo: str) -> None:
    doc = httpx.get(f"{echo}/some/path").json()
    assert doc == {"pod": "pod-1", "path": "/some/path", "env": {"ECHO_GREETING": "hi"}}


def test_readiness_can_be_flipped(echo: str) -> None:
    assert httpx.get(f"{echo}/healthz").status_code == 200
    assert httpx.post(f"{echo}/fail-ready").json() == {"ready": False}
    assert httpx.get(f"{echo}/healthz").status_code == 503
    assert httpx.post(f"{echo}/recover-ready").json() == {"ready": True}
    assert httpx.get(f"{echo}/healthz").json() == {"ready": True}
    assert httpx.post(f"{echo}/other").status_code == 404


def test_fail_file_makes_healthz_fail(echo: str, tmp_path: Path) -> None:
    http_echo._State.fail_file = tmp_path / "fail"
    assert httpx.get(f"{echo}/healthz").status_code == 200
    (tmp_path / "fail").touch()
    assert httpx.get(f"{echo}/healthz").status_code == 503


def _review(data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "object": {"data": data}}}


def test_validating_webhook(echo: str) -> None:
    allowed = httpx.post(f"{echo}/validate?timeout=10s", json=_review({"ok": "1"})).json()
    assert allowed["kind"] == "AdmissionReview"
    assert allowed["response"] == {"uid": "u-1", "allowed": True}
    denied = httpx.post(f"{echo}/validate", content=json.dumps(_review({"forbidden": "1"}))).json()
    assert denied["response"]["allowed"] is False
    assert denied["response"]["status"]["code"] == 403
    assert "pod-1" in denied["response"]["status"]["message"]


def test_main_rejects_a_bad_listen_address() -> None:
    with pytest.raises(ValueError):
        http_echo.main(["--listen", "127.0.0.1:notaport"])
