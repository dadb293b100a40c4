"""The e2e node agent: plays the kubelet for fake Nodes and runs their pods as local processes.

    python -m cmcp_devkit.cluster.node_agent <config.json>      (started by control_plane.LocalCluster)

Why: no container runtime runs on these machines, yet the operator's attestation gate,
EndpointSlices and RBAC need pods that really run, really listen and are reported the way
a kubelet reports them. Each node talks to the apiserver with its own client certificate
(``system:node:<name>``), so the Node authorizer and NodeRestriction admission apply.

Rules this agent implements (documented in README.md beside this module):

* Images: a repository ending in ``cmcp-enclave``/``cmcp-gateway``/``cmcp-guard``/
  ``cmcp-operator`` runs that console script from this venv, ``cmcp-demo`` the dev kit's
  upstream; ``cmcp-test/http-echo`` runs ``cmcp_devkit.cluster.http_echo``; anything else fails
  the pod (``ErrImagePull``). ``command`` overrides the entry point (``command[0]`` looked up in
  the venv's bin dir, then PATH).
* Filesystem: every pod has a root dir; each volume is materialised under
  ``<root>/volumes/<name>`` and a volumeMount ``/a/b`` becomes the symlink ``<root>/a/b``.
  In env values and in command/args, a string that starts with a mountPath (or has it
  right after ``=``) is rewritten to the mapped path. The process's cwd is the root, and
  ``CMCP_POD_ROOT`` names it. A container with the ServiceAccount token mounted also gets
  ``KUBECONFIG`` = a kubeconfig holding that token and CA (in-cluster paths are not real here).
* Network: each pod gets its own IP from the pod network (podnet.py) in ``status.podIP``;
  processes must bind it. ``KUBERNETES_SERVICE_HOST/PORT`` point at the apiserver.
* Simulated TEE: a pod with the Kata initdata annotation gets the exact decoded TOML at
  ``<root>/run/cmcp/initdata.toml`` (``CMCP_INITDATA``), ``CMCP_SIM_MRCONFIGID`` (TDX
  MRCONFIGID of those bytes, hex), ``CMCP_SIM_HOST_DATA`` (SNP HOST_DATA, hex), the genuine
  simulated guest's ``CMCP_SIM_MRTD``/``CMCP_SIM_RTMR0..2``, and ``CMCP_SIM_PLATFORM`` = the
  node's TEE (tdx, snp or none).
* Status: phase, container statuses, Initialized / ContainersReady / Ready conditions,
  where Ready also requires every readinessGate condition to be True. Patched with a
  strategic merge patch keyed by condition type, so conditions owned by others survive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from cmcp_core import initdata
from cmcp_enclave.simulated import launcher_env

from .kube import AsyncKube, KubeError
from .podnet import enter_netns, set_pdeathsig

Obj = dict[str, Any]

KNOWN_IMAGES = ("cmcp-enclave", "cmcp-gateway", "cmcp-guard", "cmcp-operator")
DEMO_IMAGE = "cmcp-demo"  # the demo's upstream image: the dev kit's modules, from this venv
TEST_IMAGE = "cmcp-test/http-echo"
BUILT_TEST_IMAGE = "cmcp-test-http-echo"  # the same server as a real image (cmcp_devkit.images)
INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
OUR_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


_TASKS: set[asyncio.Task[Any]] = set()


def spawn(coro: Any, name: str = "") -> asyncio.Task[Any]:
    """create_task that keeps a reference and logs a crash instead of losing it silently."""
    task = asyncio.create_task(coro, name=name or None)
    _TASKS.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _TASKS.discard(t)
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            log(f"task {t.get_name()} crashed: {exc!r}")
            traceback.print_exception(exc)

    task.add_done_callback(done)
    return task


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(msg: str) -> None:
    print(f"{dt.datetime.now(dt.UTC).strftime('%H:%M:%S.%f')[:-3]} {msg}", flush=True)


# ------------------------------------------------------------------ $(VAR) expansion & paths
def expand(value: str, env: dict[str, str]) -> str:
    """Kubelet's $(VAR) expansion: known names substituted, $$ escapes, unknown refs kept."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    name = value[i + 2 : end]
                    if name in env:
                        out.append(env[name])
                    else:
                        out.append(value[i : end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def rewrite_paths(value: str, mounts: list[tuple[str, str]]) -> str:
    """Map a mountPath prefix (at the start, or right after '=') to its materialised path."""
    for mount_path, real in mounts:
        pattern = r"(^|=)" + re.escape(mount_path.rstrip("/")) + r"(?=/|$)"

        def repl(m: re.Match[str], r: str = real) -> str:
            return m.group(1) + r

        value, n = re.subn(pattern, repl, value, count=1)
        if n:
            break
    return value


def resolve_field(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs", [])),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs", [])),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        d = meta.get(path.split(".")[1], {})
        return "".join(f'{k}="{v}"\n' for k, v in sorted(d.items()))
    if path in simple:
        return str(simple[path] or "")
    raise ValueError(f"unsupported fieldRef {path}")


def resolve_resource(container: Obj | None, ref: Obj, node_alloc: dict[str, str]) -> str:
    res = ref.get("resource", "")
    kind, _, name = res.partition(".")
    val = ((container or {}).get("resources", {}).get(kind, {}) or {}).get(name)
    return str(val if val is not None else node_alloc.get(name, "0"))


def image_repo(image: str) -> str:
    repo = image.split("@", 1)[0]
    head, _, last = repo.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


# ------------------------------------------------------------------ containers
@dataclass
class ContainerRun:
    """One container's process, restart bookkeeping and probe results."""

    spec: Obj
    init: bool = False
    proc: asyncio.subprocess.Process | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    has_run: bool = False
    argv: list[str] = field(default_factory=list)
    argv_fixed: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status_json(self) -> Obj:
        pid = self.proc.pid if self.proc else 0
        st: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": f"cmcp-e2e://{image_repo(self.spec.get('image', ''))}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if pid:
            st["containerID"] = f"cmcp-e2e://{pid}"
        return st


class PodWorker:
    """Runs one pod: set-up, processes, probes, restarts, status, termination."""

    def __init__(self, node: Node, pod: Obj) -> None:
        self.node = node
        self.agent = node.agent
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = f"{self.ns}/{self.name}"
        self.root = Path(self.agent.pods_dir) / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.logs = self.root.parent / f"{self.root.name}.logs"
        self.slot = self.agent.alloc_slot()
        self.ip = self.agent.net_pod_ip(self.slot)
        self.containers = [ContainerRun(c) for c in pod["spec"].get("containers", [])]
        self.init_containers = [ContainerRun(c, init=True) for c in pod["spec"].get("initContainers", [])]
        self.initialized = not self.init_containers
        self.failed: tuple[str, str] | None = None  # (reason, message): the pod cannot run
        self.terminating_event = asyncio.Event()
        self.start_time = now_iso()
        self.dirty = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.cond_times: dict[str, tuple[str, str]] = {}
        self.last_sent: str = ""
        self.mounts: list[tuple[str, str]] = []
        self.base_env: dict[str, str] = {}
        self.gone = False

    @property
    def terminating(self) -> bool:
        return self.terminating_event.is_set()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.tasks.append(spawn(self._report_loop(), name=f"report {self.key}"))
        self.tasks.append(spawn(self._run(), name=f"run {self.key}"))
        self.dirty.set()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.terminating_event.set()
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.tasks.append(spawn(self.terminate(30 if grace is None else int(grace), delete=True)))
        self.dirty.set()  # readiness gates may have flipped

    async def _run(self) -> None:
        try:
            await self._setup()
        except _PodFailure as exc:
            self.failed = (exc.reason, exc.message)
            log(f"{self.key}: {exc.reason}: {exc.message}")
            self.dirty.set()
            return
        for c in self.init_containers:
            while not self.terminating:
                rc = await self._run_once(c)
                if rc == 0:
                    break
                if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                    self.failed = ("Init:Error", f"init container {c.name} exited with {rc}")
                    self.dirty.set()
                    return
                await self._backoff(c)
            if self.terminating:
                return
        self.initialized = True
        self.dirty.set()
        await asyncio.gather(*(self._supervise(c) for c in self.containers))

    async def _setup(self) -> None:
        spec = self.pod["spec"]
        for c in [*self.init_containers, *self.containers]:
            c.argv_fixed, c.argv = self._argv_base(c.spec)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        vols = await self._materialise_volumes(spec.get("volumes", []))
        self.base_env = self._base_env()
        self._measure_initdata()
        for c in [*self.init_containers, *self.containers]:
            mounts: list[tuple[str, str]] = []
            for vm in c.spec.get("volumeMounts", []):
                if vm["name"] not in vols:
                    raise _PodFailure("CreateContainerConfigError", f"volume {vm['name']} not found")
                src = vols[vm["name"]] / vm.get("subPath", "")
                target = self.root / vm["mountPath"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    if target.is_symlink() and Path(os.readlink(target)) == src:
                        pass
                    elif target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                        target.rmdir()
                        target.symlink_to(src)
                else:
                    target.symlink_to(src)
                mounts.append((vm["mountPath"], str(target)))
            mounts.sort(key=lambda m: len(m[0]), reverse=True)
            c.env = await self._container_env(c.spec, mounts)
            sa_mount = next((real for mp, real in mounts if mp.rstrip("/") == SA_DIR), None)
            if sa_mount is not None and "KUBECONFIG" not in c.env:
                c.env["KUBECONFIG"] = self._write_sa_kubeconfig(Path(sa_mount))
            # Only what the pod spec wrote is rewritten; the agent's own paths (venv, PYTHONPATH,
            # pod root) must stay as they are even when a mountPath such as /work prefixes them.
            user_keys = await self._user_env_keys(c.spec)
            c.argv = c.argv_fixed + [rewrite_paths(expand(a, c.env), mounts) for a in c.argv]
            c.env = {k: rewrite_paths(v, mounts) if k in user_keys else v for k, v in c.env.items()}
            self.mounts.extend(mounts)

    def _write_sa_kubeconfig(self, sa_dir: Path) -> str:
        """A kubeconfig for the pod's own SA token: the fixed in-cluster paths do not exist here,
        so kopf/kubernetes_asyncio find the same identity through $KUBECONFIG instead."""
        path = self.root / "run" / "cmcp-e2e" / "kubeconfig"
        token = (sa_dir / "token").read_text()
        server = f"https://{self.agent.api_host}:{self.agent.api_port}"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "in-cluster",
            "clusters": [
                {
                    "name": "in-cluster",
                    "cluster": {"server": server, "certificate-authority": str(sa_dir / "ca.crt")},
                }
            ],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "in-cluster",
                    "context": {"cluster": "in-cluster", "user": "sa", "namespace": self.ns},
                }
            ],
        }
        _write_file(path, json.dumps(doc, indent=1).encode())
        return str(path)

    async def _user_env_keys(self, cspec: Obj) -> set[str]:
        keys = {item["name"] for item in cspec.get("env", [])}
        for src in cspec.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            kind = "configmaps" if "configMapRef" in src else "secrets"
            data = await self._get_keyed(kind, ref.get("name", ""), True)
            keys.update(src.get("prefix", "") + k for k in data)
        return keys

    def _argv_base(self, cspec: Obj) -> tuple[list[str], list[str]]:
        """(resolved executable part, the spec's own words) of the container's argv."""
        image = cspec.get("image", "")
        repo = image_repo(image)
        last = repo.rsplit("/", 1)[-1]
        entry: list[str] | None
        if repo == TEST_IMAGE or repo.endswith("/" + TEST_IMAGE) or last == BUILT_TEST_IMAGE:
            entry = [self.agent.python, "-m", "cmcp_devkit.cluster.http_echo"]
        elif last in KNOWN_IMAGES:
            entry = [str(Path(self.agent.bin_dir) / last)]
        elif last == DEMO_IMAGE:
            entry = [self.agent.python, "-m", "cmcp_devkit.upstream"]
        else:
            entry = None
        if entry is None:
            raise _PodFailure(
                "ErrImagePull",
                f'image "{image}" is unknown to the e2e node agent '
                f"(known: */{', */'.join(KNOWN_IMAGES)}, */{DEMO_IMAGE}, {TEST_IMAGE})",
            )
        command = cspec.get("command")
        args = list(cspec.get("args", []))
        if command:
            exe = command[0]
            if "/" in exe:  # a path the pod spec chose: subject to mountPath rewriting
                return [], [exe, *command[1:], *args]
            if exe in ("python", "python3"):
                exe = self.agent.python
            else:
                local = Path(self.agent.bin_dir) / exe
                exe = str(local) if local.exists() else (shutil.which(exe) or exe)
            return [exe], [*command[1:], *args]
        return entry, args

    def _base_env(self) -> dict[str, str]:
        host, port = self.agent.api_host, self.agent.api_port
        env = {
            "PATH": f"{self.agent.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "HOSTNAME": self.name,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_ADDR": host,
            "KUBERNETES_PORT_443_TCP_PORT": port,
            "CMCP_POD_ROOT": str(self.root),
            "CMCP_SIM_PLATFORM": self.node.tee,
            # the agent's own import path too: pods run the code the harness runs (a worktree's)
            "PYTHONPATH": os.pathsep.join(filter(None, (self.agent.repo_root, os.environ.get("PYTHONPATH")))),
        }
        return env

    def _measure_initdata(self) -> None:
        value = (self.pod["metadata"].get("annotations") or {}).get(INITDATA_ANNOTATION)
        if value is None:
            return
        try:
            raw = initdata.decode_annotation(value)
            initdata.tdx_mrconfigid(raw)  # refuses initdata Kata could not measure into MRCONFIGID
            host_data = initdata.snp_host_data(raw)
        except Exception as exc:  # Kata would refuse to create the sandbox
            raise _PodFailure("InitdataInvalid", f"{INITDATA_ANNOTATION}: {exc}") from exc
        path = self.root / "run" / "cmcp" / "initdata.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        self.base_env.update(
            {
                "CMCP_INITDATA": str(path),
                **launcher_env(raw),  # MRCONFIGID and the genuine simulated guest's MRTD/RTMRs
                "CMCP_SIM_HOST_DATA": host_data.hex(),
            }
        )

    async def _container_env(self, cspec: Obj, mounts: list[tuple[str, str]]) -> dict[str, str]:
        env = dict(self.base_env)
        for src in cspec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = await self._get_keyed(
                    "configmaps", src["configMapRef"]["name"], src["configMapRef"].get("optional", False)
                )
            else:
                data = await self._get_keyed(
                    "secrets", src["secretRef"]["name"], src["secretRef"].get("optional", False)
                )
            for k, v in data.items():
                env[prefix + k] = v.decode(errors="replace")
        for item in cspec.get("env", []):
            name = item["name"]
            if "value" in item:
                env[name] = expand(item["value"], env)
            elif "valueFrom" in item:
                vf = item["valueFrom"]
                if "fieldRef" in vf:
                    env[name] = resolve_field(self._pod_with_ip(), vf["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in vf:
                    env[name] = resolve_resource(cspec, vf["resourceFieldRef"], self.node.allocatable)
                elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                    kind = "configmaps" if "configMapKeyRef" in vf else "secrets"
                    ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
                    data = await self._get_keyed(kind, ref["name"], ref.get("optional", False))
                    if ref["key"] in data:
                        env[name] = data[ref["key"]].decode(errors="replace")
                    elif not ref.get("optional", False):
                        raise _PodFailure(
                            "CreateContainerConfigError",
                            f"key {ref['key']} not found in {kind} {ref['name']}",
                        )
            else:
                env[name] = ""
        return env

    def _pod_with_ip(self) -> Obj:
        pod: Obj = json.loads(json.dumps(self.pod))
        pod.setdefault("status", {}).update(
            {
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": self.agent.api_host,
                "hostIPs": [{"ip": self.agent.api_host}],
            }
        )
        return pod

    async def _get_keyed(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        """ConfigMap/Secret data as bytes. Like the kubelet, a missing (404) or not yet authorised
        (403: the Node authorizer's graph lags the binding) object is retried until it appears
        or the pod is deleted; the container shows CreateContainerConfigError meanwhile."""
        started = time.monotonic()
        while True:
            try:
                obj = await self.node.api.req("GET", f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
                break
            except KubeError as exc:
                if exc.status == 404 and optional:
                    return {}
                if exc.status in (403, 404) and not self.terminating:
                    await self._still_waiting(started, f"{kind[:-1]} {name}: HTTP {exc.status}")
                    continue
                raise _PodFailure("CreateContainerConfigError", f"{kind[:-1]} {name}: {exc}") from exc
        out: dict[str, bytes] = {}
        if kind == "secrets":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    async def _materialise_volumes(self, volumes: list[Obj]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for vol in volumes:
            d = self.root / "volumes" / vol["name"]
            d.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                pass
            elif "hostPath" in vol:
                d.rmdir()
                d.symlink_to(vol["hostPath"]["path"])
            elif "configMap" in vol or "secret" in vol:
                await self._write_keyed(
                    d,
                    vol.get("configMap") or vol["secret"],
                    "configmaps" if "configMap" in vol else "secrets",
                )
            elif "downwardAPI" in vol:
                self._write_downward(d, vol["downwardAPI"].get("items", []))
            elif "projected" in vol:
                for src in vol["projected"].get("sources", []):
                    if "serviceAccountToken" in src:
                        await self._write_token(d, src["serviceAccountToken"])
                    elif "configMap" in src:
                        await self._write_keyed(d, src["configMap"], "configmaps")
                    elif "secret" in src:
                        await self._write_keyed(d, src["secret"], "secrets")
                    elif "downwardAPI" in src:
                        self._write_downward(d, src["downwardAPI"].get("items", []))
                    else:
                        raise _PodFailure(
                            "CreateContainerConfigError", f"unsupported projected source {list(src)}"
                        )
            else:
                raise _PodFailure(
                    "CreateContainerConfigError", f"unsupported volume type in {vol['name']}: {list(vol)}"
                )
            out[vol["name"]] = d
        return out

    async def _still_waiting(self, started: float, what: str) -> None:
        """Back off between set-up retries; after a few seconds, say why in the container status."""
        waited = time.monotonic() - started
        if waited > 5:
            for c in [*self.init_containers, *self.containers]:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": what}}
            self.dirty.set()
        await asyncio.sleep(0.5 if waited < 5 else 2.0)

    async def _write_keyed(self, d: Path, ref: Obj, kind: str) -> None:
        name = ref.get("name") or ref.get("secretName", "")
        data = await self._get_keyed(kind, name, ref.get("optional", False))
        items = ref.get("items")
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key not in data:
                if ref.get("optional", False):
                    continue
                raise _PodFailure("CreateContainerConfigError", f"key {key} not found in {kind[:-1]} {name}")
            _write_file(d / rel, data[key])

    def _write_downward(self, d: Path, items: list[Obj]) -> None:
        for item in items:
            if "fieldRef" in item:
                value = resolve_field(self._pod_with_ip(), item["fieldRef"]["fieldPath"])
            else:
                cname = item["resourceFieldRef"].get("containerName")
                cspec = next((c for c in self.pod["spec"]["containers"] if c["name"] == cname), None)
                value = resolve_resource(cspec, item["resourceFieldRef"], self.node.allocatable)
            _write_file(d / item["path"], value.encode())

    async def _write_token(self, d: Path, src: Obj) -> None:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": int(src.get("expirationSeconds", 3600)),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        started = time.monotonic()
        while True:
            try:
                tr = await self.node.api.req(
                    "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
                )
                break
            except KubeError as exc:
                if exc.status in (403, 404) and not self.terminating:
                    await self._still_waiting(started, f"token for serviceaccount {sa}: HTTP {exc.status}")
                    continue
                raise _PodFailure(
                    "CreateContainerConfigError", f"token for serviceaccount {sa}: {exc}"
                ) from exc
        _write_file(d / src.get("path", "token"), tr["status"]["token"].encode())
        expires = dt.datetime.fromisoformat(tr["status"]["expirationTimestamp"].replace("Z", "+00:00"))
        ttl = (expires - dt.datetime.now(dt.UTC)).total_seconds()
        if ttl < 86400:  # the apiserver extends kube-api-access tokens to a year; others expire
            self.tasks.append(spawn(self._refresh_token(d, src, sa, body, ttl), name=f"token {self.key}"))

    async def _refresh_token(self, d: Path, src: Obj, sa: str, body: Obj, ttl: float) -> None:
        """Rotate a projected token at 80% of its lifetime, as the kubelet does."""
        while not self.terminating:
            await asyncio.sleep(max(ttl * 0.8, 5.0))
            try:
                tr = await self.node.api.req(
                    "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
                )
            except (KubeError, httpx.HTTPError) as exc:
                log(f"{self.key}: token refresh failed: {exc!r}")
                ttl = 10.0
                continue
            _write_file(d / src.get("path", "token"), tr["status"]["token"].encode())
            kubeconfig = self.root / "run" / "cmcp-e2e" / "kubeconfig"
            if kubeconfig.exists() and (d / "ca.crt").exists():
                self._write_sa_kubeconfig(d)
            expires = dt.datetime.fromisoformat(tr["status"]["expirationTimestamp"].replace("Z", "+00:00"))
            ttl = (expires - dt.datetime.now(dt.UTC)).total_seconds()

    # ------------------------------------------------------------ processes
    async def _spawn(self, c: ContainerRun, argv: list[str]) -> asyncio.subprocess.Process:
        netns = self.agent.netns_path
        logf = (self.logs / f"{c.name}.log").open("ab")

        def preexec() -> None:
            set_pdeathsig()
            if netns:
                enter_netns(netns)

        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                env=c.env,
                cwd=str(self.root),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            logf.close()

    async def _run_once(self, c: ContainerRun) -> int:
        try:
            c.proc = await self._spawn(c, c.argv)
        except OSError as exc:
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(exc),
                    "startedAt": now_iso(),
                    "finishedAt": now_iso(),
                }
            }
            self.dirty.set()
            return 128
        started = now_iso()
        c.state = {"running": {"startedAt": started}}
        c.has_run = True
        self.dirty.set()
        probes = self._start_probes(c)
        rc = await c.proc.wait()
        for p in probes:
            p.cancel()
        c.ready = False
        c.started = False
        exit_code = rc if rc >= 0 else 128 - rc
        c.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if rc == 0 else "Error",
                "startedAt": started,
                "finishedAt": now_iso(),
                "containerID": f"cmcp-e2e://{c.proc.pid}",
            }
        }
        self.dirty.set()
        return exit_code

    async def _supervise(self, c: ContainerRun) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.terminating:
            rc = await self._run_once(c)
            if self.terminating or policy == "Never" or (policy == "OnFailure" and rc == 0):
                return
            await self._backoff(c)

    async def _backoff(self, c: ContainerRun) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** min(c.restart_count, 10))
        c.last_state = c.state
        c.restart_count += 1
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.name}",
            }
        }
        self.dirty.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_terminating(), delay)

    async def _until_terminating(self) -> None:
        await self.terminating_event.wait()

    def _start_probes(self, c: ContainerRun) -> list[asyncio.Task[Any]]:
        if c.init:
            return []
        tasks = [spawn(self._probe_loop(c))]
        return tasks

    async def _probe_loop(self, c: ContainerRun) -> None:
        """Startup probe, then readiness and liveness probes, with kubelet's thresholds."""
        startup = c.spec.get("startupProbe")
        if startup and not await self._probe_until(c, startup, want=True):
            return
        c.started = True
        readiness, liveness = c.spec.get("readinessProbe"), c.spec.get("livenessProbe")
        if readiness is None:
            c.ready = True
        self.dirty.set()
        loops = []
        if readiness:
            loops.append(self._readiness(c, readiness))
        if liveness:
            loops.append(self._liveness(c, liveness))
        await asyncio.gather(*loops)

    async def _probe_until(self, c: ContainerRun, probe: Obj, want: bool) -> bool:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        fails = 0
        while c.proc and c.proc.returncode is None:
            if await self._probe(c, probe):
                return True
            fails += 1
            if fails >= int(probe.get("failureThreshold", 3)):
                await self._kill(c, reason="startup probe failed")
                return False
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))
        return False

    async def _readiness(self, c: ContainerRun, probe: Obj) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        ok_run = fail_run = 0
        while c.proc and c.proc.returncode is None and not self.terminating:
            if await self._probe(c, probe):
                ok_run, fail_run = ok_run + 1, 0
                if not c.ready and ok_run >= int(probe.get("successThreshold", 1)):
                    c.ready = True
                    self.dirty.set()
            else:
                ok_run, fail_run = 0, fail_run + 1
                if c.ready and fail_run >= int(probe.get("failureThreshold", 3)):
                    c.ready = False
                    self.dirty.set()
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _liveness(self, c: ContainerRun, probe: Obj) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        fails = 0
        while c.proc and c.proc.returncode is None and not self.terminating:
            fails = 0 if await self._probe(c, probe) else fails + 1
            if fails >= int(probe.get("failureThreshold", 3)):
                await self._kill(c, reason="liveness probe failed")
                return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    def _port(self, c: ContainerRun, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"named port {port} not found")

    async def _probe(self, c: ContainerRun, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                hg = probe["httpGet"]
                scheme = hg.get("scheme", "HTTP").lower()
                url = (
                    f"{scheme}://{hg.get('host') or self.ip}:{self._port(c, hg['port'])}{hg.get('path', '/')}"
                )
                headers = {h["name"]: h["value"] for h in hg.get("httpHeaders", [])}
                resp = await self.agent.probe_http.get(url, headers=headers, timeout=timeout)
                return 200 <= resp.status_code < 400
            if "tcpSocket" in probe:
                ts = probe["tcpSocket"]
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(ts.get("host") or self.ip, self._port(c, ts["port"])), timeout
                )
                writer.close()
                return True
            if "exec" in probe:
                proc = await self._spawn(c, list(probe["exec"]["command"]))
                try:
                    return await asyncio.wait_for(proc.wait(), timeout) == 0
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return False
            if "grpc" in probe:
                return await self._grpc_probe(c, probe["grpc"], timeout)
        except (httpx.HTTPError, OSError, TimeoutError, ValueError) as exc:
            if os.environ.get("CMCP_E2E_DEBUG_PROBES"):
                log(f"{self.key}/{c.name}: probe failed: {exc!r}")
            return False
        return False

    async def _grpc_probe(self, c: ContainerRun, spec: Obj, deadline: float) -> bool:
        # grpcio-health-checking comes with cmcp-enclave, not with the dev kit's own dependencies:
        # only a pod with a gRPC probe (an enclave pod, so cmcp-enclave is installed) needs it.
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(f"{self.ip}:{int(spec['port'])}") as ch:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=spec.get("service", "")), timeout=deadline
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def _kill(self, c: ContainerRun, reason: str, grace: float = 10.0) -> None:
        proc = c.proc
        if proc is None or proc.returncode is not None:
            return
        log(f"{self.key}/{c.name}: stopping ({reason})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)

    async def terminate(self, grace: int, delete: bool) -> None:
        """Graceful stop of every container, then (like the kubelet) delete with grace 0."""
        self.terminating_event.set()
        await asyncio.gather(
            *(self._kill(c, "pod deletion", float(grace)) for c in self.containers + self.init_containers)
        )
        for c in self.containers:
            c.ready = False
        self.dirty.set()
        if delete:
            with contextlib.suppress(Exception):
                await self._flush_status()
            path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}"
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            for _ in range(20):
                try:
                    await self.node.api.req("DELETE", path, body)
                    break
                except KubeError as exc:
                    if exc.status in (404, 409):
                        break
                    await asyncio.sleep(0.5)
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
        self.forget()

    def forget(self) -> None:
        if not self.gone:
            self.gone = True
            self.agent.free_slot(self.slot)
            self.node.pods.pop(self.uid, None)
            for t in self.tasks:
                if t is not asyncio.current_task():
                    t.cancel()
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ status
    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self.cond_times.get(ctype)
        if prev is None or prev[0] != status:
            self.cond_times[ctype] = (status, now_iso())
        cond: Obj = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self.cond_times[ctype][1],
        }
        if reason and not ok:
            cond["reason"], cond["message"] = reason, message
        return cond

    def compute_status(self) -> Obj:
        spec, cur = self.pod["spec"], self.pod.get("status", {})
        policy = spec.get("restartPolicy", "Always")
        if self.failed:
            reason, message = self.failed
            for c in self.containers:
                if not c.has_run:
                    c.state = {"waiting": {"reason": reason, "message": message}}
        statuses = [c.status_json() for c in self.containers]
        init_statuses = [c.status_json() for c in self.init_containers]
        not_ready = [c.name for c in self.containers if not c.ready]
        containers_ready = not not_ready and self.initialized and not self.failed
        gates = [g["conditionType"] for g in spec.get("readinessGates", [])]
        others = {c["type"]: c.get("status") for c in cur.get("conditions", [])}
        missing_gates = [g for g in gates if others.get(g) != "True"]
        ready = containers_ready and not missing_gates
        if not containers_ready:
            r_reason, r_msg = "ContainersNotReady", f"containers with unready status: [{' '.join(not_ready)}]"
        else:
            gate = missing_gates[0] if missing_gates else ""
            r_reason = "ReadinessGatesNotReady"
            r_msg = f'corresponding condition of pod readiness gate "{gate}" does not exist or is not True'

        running = any("running" in c.state for c in self.containers)
        terminated = [c.state["terminated"] for c in self.containers if "terminated" in c.state]
        if self.failed:
            phase = "Failed"
        elif (
            self.containers
            and len(terminated) == len(self.containers)
            and (policy != "Always" or self.terminating)
        ):
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in terminated) else "Failed"
            if policy == "OnFailure" and phase == "Failed" and not self.terminating:
                phase = "Running"
        elif running or any(c.restart_count for c in self.containers):
            phase = "Running"
        else:
            phase = "Pending"
        conditions = [
            self._condition("PodReadyToStartContainers", True),
            self._condition(
                "Initialized",
                self.initialized,
                "ContainersNotInitialized",
                "containers with incomplete status: init containers",
            ),
            self._condition(
                "ContainersReady",
                containers_ready,
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(not_ready)}]",
            ),
            self._condition("Ready", ready, r_reason, r_msg),
        ]
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.agent.api_host,
            "hostIPs": [{"ip": self.agent.api_host}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        if self.failed:
            status["reason"], status["message"] = self.failed
        return status

    async def _flush_status(self) -> None:
        status = self.compute_status()
        blob = json.dumps(status, sort_keys=True)
        if blob == self.last_sent:
            return
        await self.node.api.req(
            "PATCH",
            f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
            {"status": status},
            "application/strategic-merge-patch+json",
        )
        self.last_sent = blob

    async def _report_loop(self) -> None:
        while not self.gone:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self._flush_status()
            except KubeError as exc:
                if exc.status == 404:
                    return
                log(f"{self.key}: status patch failed: {exc}")
                await asyncio.sleep(0.5)
                self.dirty.set()
            except httpx.HTTPError as exc:
                log(f"{self.key}: status patch failed: {exc!r}")
                await asyncio.sleep(0.5)
                self.dirty.set()
            await asyncio.sleep(0.05)


class _PodFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ------------------------------------------------------------------ nodes
class Node:
    """One fake Node: registration, heartbeats, Lease, and the pods bound to it."""

    def __init__(self, agent: NodeAgent, cfg: Obj) -> None:
        self.agent = agent
        self.name: str = cfg["name"]
        self.labels: dict[str, str] = cfg.get("labels", {})
        self.tee: str = cfg.get("tee", "none")
        self.allocatable = {
            "cpu": cfg.get("cpu", "8"),
            "memory": cfg.get("memory", "32Gi"),
            "pods": cfg.get("pods", "110"),
            "ephemeral-storage": "100Gi",
        }
        self.api = AsyncKube(agent.server, agent.ca, cfg["cert"], cfg["key"])
        self.pods: dict[str, PodWorker] = {}

    def _conditions(self) -> list[Obj]:
        t = now_iso()
        base = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return [
            {
                "type": ty,
                "status": st,
                "reason": r,
                "message": f"cmcp-e2e node agent: {r}",
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.agent.started_at,
            }
            for ty, st, r in base
        ]

    def _status(self) -> Obj:
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": self.agent.api_host},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": self.name,
                "systemUUID": self.name,
                "bootID": self.agent.boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "cmcp-e2e",
                "containerRuntimeVersion": "cmcp-e2e-node-agent://0.1.0",
                "kubeletVersion": self.agent.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {},
            "status": self._status(),
        }
        try:
            await self.api.req("POST", "/api/v1/nodes", body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        # Feature labels are NodeRestriction-protected (*.kubernetes.io): NFD sets them, not the kubelet.
        if self.labels:
            await self.agent.admin.req(
                "PATCH",
                f"/api/v1/nodes/{self.name}",
                {"metadata": {"labels": self.labels}},
                "application/merge-patch+json",
            )
        await self.patch_status()

    async def patch_status(self) -> None:
        await self.api.req(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            {"status": self._status()},
            "application/strategic-merge-patch+json",
        )

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(10)
            try:
                await self.patch_status()
            except (KubeError, httpx.HTTPError) as exc:
                log(f"node {self.name}: status heartbeat failed: {exc!r}")

    async def lease_loop(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        while True:
            spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
            try:
                try:
                    await self.api.req("PATCH", path, {"spec": spec}, "application/merge-patch+json")
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    node = await self.api.req("GET", f"/api/v1/nodes/{self.name}")
                    await self.api.req(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {
                                "name": self.name,
                                "namespace": "kube-node-lease",
                                "ownerReferences": [
                                    {
                                        "apiVersion": "v1",
                                        "kind": "Node",
                                        "name": self.name,
                                        "uid": node["metadata"]["uid"],
                                    }
                                ],
                            },
                            "spec": spec,
                        },
                    )
            except (KubeError, httpx.HTTPError) as exc:
                log(f"node {self.name}: lease renew failed: {exc!r}")
            await asyncio.sleep(10)

    def handle(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.pods.get(uid)
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):  # finished before this agent started
                    spawn(self._delete_finished(pod))
                return
            worker = PodWorker(self, pod)
            self.pods[uid] = worker
            log(f"node {self.name}: starting pod {worker.key} ip {worker.ip}")
            worker.start()
        worker.update(pod)

    async def _delete_finished(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(KubeError, httpx.HTTPError):
            await self.api.req(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    async def watch_loop(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while True:
            try:
                listing = await self.api.req("GET", "/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self.handle(pod)
                for uid, w in list(self.pods.items()):
                    if uid not in seen:
                        spawn(w.terminate(0, delete=False))
                rv = listing["metadata"]["resourceVersion"]
                while True:
                    async for ev in self.api.watch(
                        "/api/v1/pods", fieldSelector=selector, resourceVersion=rv
                    ):
                        kind, obj = ev["type"], ev["object"]
                        if kind == "ERROR":
                            raise KubeError(
                                "WATCH", "/api/v1/pods", int(obj.get("code", 500)), obj.get("message", "")
                            )
                        rv = obj["metadata"]["resourceVersion"]
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            gone = self.pods.get(obj["metadata"]["uid"])
                            if gone is not None:
                                spawn(gone.terminate(0, delete=False))
                            continue
                        self.handle(obj)
            except asyncio.CancelledError:
                raise
            except (KubeError, httpx.HTTPError, json.JSONDecodeError) as exc:
                log(f"node {self.name}: pod watch restarts after: {exc!r}")
                await asyncio.sleep(1)

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(w.terminate(3, delete=False) for w in list(self.pods.values())), return_exceptions=True
        )


class NodeAgent:
    """All fake nodes of one cluster, sharing the pod network's IP pool."""

    def __init__(self, cfg: Obj) -> None:
        self.server: str = cfg["server"]
        self.ca: str = cfg["ca"]
        self.admin = AsyncKube(self.server, self.ca, cfg["admin"]["cert"], cfg["admin"]["key"])
        net = cfg["network"]
        self.netns_path: str | None = net.get("netns_path")
        self.pod_prefix: str = net["pod_prefix"]
        hostport = self.server.split("://", 1)[1]
        self.api_host, self.api_port = hostport.rsplit(":", 1)
        self.pods_dir: str = cfg["pods_dir"]
        self.bin_dir: str = cfg["bin_dir"]
        self.python: str = cfg.get("python", sys.executable)
        self.repo_root: str = cfg["repo_root"]
        self.runtime_classes: dict[str, dict[str, str]] = cfg.get("runtime_classes", {})
        self.kube_version = "v" + cfg.get("kube_version", "1.35.4")
        self.started_at = now_iso()
        self.boot_id = os.urandom(8).hex()
        self.used_slots: set[int] = set()
        self.nodes = [Node(self, n) for n in cfg["nodes"]]
        # as a kubelet does: HTTPS probes do not verify the pod's certificate
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        self.probe_http = httpx.AsyncClient(verify=False, limits=no_keepalive)  # noqa: S501

    def alloc_slot(self) -> int:
        for slot in range(0, 240):
            if slot not in self.used_slots:
                self.used_slots.add(slot)
                return slot
        raise RuntimeError("pod IP pool exhausted")

    def free_slot(self, slot: int) -> None:
        self.used_slots.discard(slot)

    def net_pod_ip(self, slot: int) -> str:
        return f"{self.pod_prefix}{10 + slot}"

    async def ensure_runtime_classes(self) -> None:
        for name, selector in self.runtime_classes.items():
            body = {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": name},
                "handler": name,
                "scheduling": {"nodeSelector": selector},
            }
            try:
                await self.admin.req("POST", "/apis/node.k8s.io/v1/runtimeclasses", body)
            except KubeError as exc:
                if exc.status != 409:
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_runtime_classes()
        for node in self.nodes:
            await node.register()
        log(f"registered {', '.join(n.name for n in self.nodes)}")
        tasks = [
            spawn(coro) for n in self.nodes for coro in (n.heartbeat_loop(), n.lease_loop(), n.watch_loop())
        ]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(n.shutdown() for n in self.nodes), return_exceptions=True)


async def amain(cfg: Obj) -> int:
    agent = NodeAgent(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)
    log("node agent stopped")
    return 0


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m cmcp_devkit.cluster.node_agent <config.json>", file=sys.stderr)
        return 2
    cfg = json.loads(Path(sys.argv[1]).read_text())
    Path(cfg["pods_dir"]).mkdir(parents=True, exist_ok=True)
    return asyncio.run(amain(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
