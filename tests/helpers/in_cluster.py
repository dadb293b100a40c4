"""A pod's view of a cluster, without a cluster: the ServiceAccount's token, CA and namespace at
their standard path and ``KUBERNETES_SERVICE_HOST`` / ``PORT`` in the environment, as the kubelet
gives them, and a TLS stand-in apiserver that records the bearer token of every request.

The files are placed in a private mount namespace (``unshare --mount``: a tmpfs over ``/run``,
which ``/var/run`` links to), so the code under test reads the real path and the host keeps
nothing. No ``KUBECONFIG`` and an empty ``HOME``: only the in-cluster configuration can work.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cmcp_core.kube_config import SERVICE_ACCOUNT_DIR
from cmcp_operator.webhook import mint_certificates

needs_mount_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="placing the ServiceAccount at its standard path needs root and a private mount namespace",
)

TOKEN = "in-cluster-token-4711"


@dataclass
class StandInApiserver:
    port: int
    service_account: Path  # token, ca.crt, namespace: what the kubelet projects
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization header)


@contextmanager
def stand_in_apiserver(workdir: Path) -> Iterator[StandInApiserver]:
    """Answers every GET with an empty object (an McpRoute with no status for its path)."""
    ca, cert, key = mint_certificates(workdir / "tls", ["127.0.0.1"])
    account = workdir / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "namespace").write_text("cmcp")
    shutil.copy(ca, account / "ca.crt")
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            body = json.dumps({"kind": "McpRoute", "metadata": {"name": "r"}} if "mcproutes" in self.path
                              else {"kind": "Status", "code": 404}).encode()
            self.send_response(200 if "mcproutes" in self.path else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StandInApiserver(server.server_address[1], account, seen)
    finally:
        server.shutdown()
        server.server_close()


def run_in_pod(code: str, apiserver: StandInApiserver, workdir: Path,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (a Python program) as a pod would see the cluster; its output is returned."""
    script = workdir / "in_pod.py"
    script.write_text(code)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    child_env.update(HOME=str(home), KUBERNETES_SERVICE_HOST="127.0.0.1",
                     KUBERNETES_SERVICE_PORT=str(apiserver.port), **(env or {}))
    place = (f"mount -t tmpfs tmpfs /run && mkdir -p {SERVICE_ACCOUNT_DIR} "
             f"&& cp {apiserver.service_account}/* {SERVICE_ACCOUNT_DIR}/ && exec \"$0\" \"$1\"")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", place,
                           sys.executable, str(script)],
                          capture_output=True, text=True, env=child_env, timeout=120)
