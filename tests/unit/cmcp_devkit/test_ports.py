"""cmcp_devkit.ports: free loopback ports that are never handed out twice, and waiting for one to open."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cmcp_devkit.ports import free_port, wait_port


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # raises if it were taken


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_wait_port_returns_once_a_listener_accepts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        wait_port(listener.getsockname()[1], timeout=5.0)


def test_wait_port_times_out_on_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:  # bound, never listening
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(TimeoutError, match=f"port {port} did not open"):
            wait_port(port, timeout=0.3)


def test_wait_port_fails_early_when_the_process_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match="process exited with 3"):
        wait_port(free_port(), timeout=30.0, proc=proc)  # does not wait 30 s
