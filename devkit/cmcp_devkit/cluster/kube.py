"""The dev kit's Kubernetes REST client: :class:`Kube` (synchronous, built from a kubeconfig or a client
certificate) for the e2e tests, the operator benchmark and the registered-only nodes.

Why not kubernetes_asyncio here: test bodies read better synchronously, and a thin client over
httpx shows the exact HTTP the apiserver answers (status codes such as 403/409 are the point
of several tests). Supports client certs, bearer tokens and CA data, i.e. the local plane's
and kind's kubeconfigs; exec credential plugins are not supported (use kubectl for those).
The product's own clients (the operator's ``Kube`` facade, ``cmcp_core.route_status``, the
conformance suite's route reader) stay on kubernetes_asyncio and never import the dev kit.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

T = TypeVar("T")


class KubeError(RuntimeError):
    """A non-2xx answer; ``status`` and ``body`` keep what the apiserver said."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:600]}")
        self.status = status
        self.body = body


def _materialise(entry: dict[str, Any], key: str, tmp: Path) -> str | None:
    if f"{key}-data" in entry:
        path = tmp / key
        path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        return str(path)
    value = entry.get(key)
    return str(value) if value else None


def ssl_context(ca: str | None, cert: str | None, key: str | None, insecure: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


class Kube:
    """Typed-enough REST verbs on top of one httpx.Client; paths are apiserver URL paths."""

    def __init__(self, server: str, ctx: ssl.SSLContext, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server
        self.http = httpx.Client(base_url=server, verify=ctx, headers=headers, timeout=30.0)

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> Kube:
        doc = yaml.safe_load(Path(path).read_text())
        ctx_name = context or doc["current-context"]
        kctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == kctx["cluster"])
        user: dict[str, Any] = next(
            (u["user"] for u in doc.get("users", []) if u["name"] == kctx.get("user")), {}
        )
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / "c").mkdir()
            ca = _materialise(cluster, "certificate-authority", t)
            cert = _materialise(user, "client-certificate", t / "c")
            key = _materialise(user, "client-key", t / "c")
            sctx = ssl_context(ca, cert, key, bool(cluster.get("insecure-skip-tls-verify")))
        return cls(cluster["server"], sctx, user.get("token"))

    @classmethod
    def with_token(cls, server: str, ca_file: str | Path, token: str) -> Kube:
        """A client acting as a ServiceAccount (RBAC tests)."""
        return cls(server, ssl_context(str(ca_file), None, None), token)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        if resp.status_code >= 300:
            raise KubeError(method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        ctype = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", path, json=body, headers={"Content-Type": ctype})

    def apply(self, path: str, body: dict[str, Any], manager: str = "cmcp-e2e") -> Any:
        """Server-side apply (create or update) of one object at its own URL."""
        return self.request(
            "PATCH",
            path,
            json=body,
            params={"fieldManager": manager, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
        )

    def delete(self, path: str, missing_ok: bool = True, **params: Any) -> Any:
        try:
            return self.request("DELETE", path, params=params or None)
        except KubeError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def wait_for(
        self,
        what: str,
        probe: Callable[[], T | None],
        timeout: float = 90.0,
        interval: float = 0.25,
        on_timeout: Callable[[], str] | None = None,
    ) -> T:
        """Poll ``probe`` until it returns a truthy value; the timeout is generous, not a SLO."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                value = probe()
                if value:
                    return value
            except KubeError as exc:
                last_exc = exc
            if time.monotonic() > deadline:
                extra = on_timeout() if on_timeout else ""
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_exc}\n{extra}"
                )
            time.sleep(interval)

