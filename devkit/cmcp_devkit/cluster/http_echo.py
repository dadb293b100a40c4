"""The ``cmcp-test/http-echo`` test image: a tiny HTTP server whose readiness a test can flip.

Why: e2e tests need a pod that really listens, answers a readiness probe, and can be made
unready on demand to watch it leave the EndpointSlice, from an image built in the run.

Listens on ``--listen HOST:PORT`` (default ``$POD_IP:8080``). Endpoints:
``GET /healthz`` 200 unless readiness was failed (then 503); ``GET /`` echoes the pod name
and the request path; ``POST /fail-ready`` and ``POST /recover-ready``
flip readiness (also the file ``--fail-file`` when it exists makes /healthz fail);
``POST /validate`` is a validating admission webhook (denies objects whose ``data`` has the
key ``forbidden``; serve it with ``--tls-cert/--tls-key``); SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit


class _State:
    ready = True
    fail_file: Path | None = None


class Server(ThreadingHTTPServer):
    """Skips HTTPServer's reverse-DNS lookup of the bind address (no DNS in the pod network)."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class Handler(BaseHTTPRequestHandler):
    """Answers /healthz, /, /fail-ready and /recover-ready."""

    server_version = "cmcp-http-echo/1"

    def _send(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _ready(self) -> bool:
        return _State.ready and not (_State.fail_file is not None and _State.fail_file.exists())

    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = self._ready()
            self._send(200 if ok else 503, {"ready": ok})
            return
        self._send(
            200,
            {
                "pod": os.environ.get("POD_NAME", ""),
                "path": self.path,
                "env": {k: v for k, v in os.environ.items() if k.startswith("ECHO_")},
            },
        )

    def _validate(self) -> None:
        """A ValidatingAdmissionWebhook: deny objects whose data has the key "forbidden"."""
        length = int(self.headers.get("Content-Length", "0"))
        review = json.loads(self.rfile.read(length) or b"{}")
        request = review.get("request") or {}
        obj = request.get("object") or {}
        allowed = "forbidden" not in (obj.get("data") or {})
        response: dict[str, object] = {"uid": request.get("uid", ""), "allowed": allowed}
        if not allowed:
            response["status"] = {
                "code": 403,
                "message": f"http-echo webhook in {os.environ.get('POD_NAME')} denies data key 'forbidden'",
            }
        self._send(
            200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    def do_POST(self) -> None:
        if urlsplit(self.path).path == "/validate":  # the apiserver appends ?timeout=...
            self._validate()
            return
        if self.path == "/fail-ready":
            _State.ready = False
        elif self.path == "/recover-ready":
            _State.ready = True
        else:
            self._send(404, {"error": "unknown path"})
            return
        self._send(200, {"ready": self._ready()})

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="http-echo")
    parser.add_argument("--listen", default=f"{os.environ.get('POD_IP', '127.0.0.1')}:8080")
    parser.add_argument("--fail-file", default=None)
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM cert (and --tls-key)")
    parser.add_argument("--tls-key", default=None)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    _State.fail_file = Path(args.fail_file) if args.fail_file else None
    server = Server((host, int(port)), Handler)
    if args.tls_cert and args.tls_key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"http-echo listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
