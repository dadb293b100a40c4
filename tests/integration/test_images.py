"""The images, built for real from the project's one Dockerfile (``cmcp_devkit.images``: buildah on a
Debian base made by mmdebstrap), read back from their OCI archives.

What must hold: the same sources give the same digest (the release manifest pins it); the
enclave image carries the enclave, the shared core and their libraries and nothing of the
gateway, guard or operator; every image runs its console script as user 65532 and carries no
pip and no compiled bytecode (whose headers hold build times); and each console script starts
inside its image (the guard's did not: its distribution lacked a library only the development
venv happened to hold).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit import images
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, EnclaveProcess
from cmcp_devkit.initdata import DEFAULT_ROUTE, render_initdata
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_enclave.simulated import launcher_env
from tests.helpers import oci_run
from tests.helpers.gateway_stack import AUDIENCE
from tests.helpers.held_cedar import BIG_ARGUMENTS, HELD_TOOL
from tests.helpers.oci_run import Container
from tests.paths import EXAMPLES

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("buildah") is None or shutil.which("mmdebstrap") is None,
        reason="building images needs root, buildah and mmdebstrap (scripts/setup.sh installs them as root)",
    ),
    # the first test builds all four images (about 2.5 min alone, over 5 min on a busy machine)
    pytest.mark.timeout(1800),
]

ENTRYPOINTS = {"enclave": "cmcp-enclave", "gateway": "cmcp-gateway", "guard": "cmcp-guard",
               "operator": "cmcp-operator"}
# what the trusted enclave image must never hold: the other components and their frameworks
NOT_IN_THE_ENCLAVE = ("cmcp_gateway", "cmcp_guard", "cmcp_operator", "kopf", "kubernetes", "starlette",
                      "uvicorn", "pip", "setuptools")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, images.Built]:
    out = tmp_path_factory.mktemp("images")
    made = {b.name: b for b in images.build_all(out)}
    return made  # build() leaves no image in buildah's store; the base stays cached there


def _blob(archive: Path, digest: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
        assert member is not None
        return member.read()


def _manifest(image: images.Built) -> dict[str, Any]:
    return json.loads(_blob(Path(image.archive), image.digest))


def _config(image: images.Built) -> dict[str, Any]:
    return json.loads(_blob(Path(image.archive), _manifest(image)["config"]["digest"]))


def _paths(image: images.Built) -> set[str]:
    """Every path in the image's layers."""
    found: set[str] = set()
    for layer in _manifest(image)["layers"]:
        raw = _blob(Path(image.archive), layer["digest"])
        with tarfile.open(fileobj=_gunzipped(raw)) as tar:
            found.update(tar.getnames())
    return found


def _gunzipped(raw: bytes) -> io.BytesIO:
    return io.BytesIO(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def _entries(image: images.Built, *names: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The named paths as the image's layers leave them (a later layer's entry wins)."""
    found: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    for layer in _manifest(image)["layers"]:
        with tarfile.open(fileobj=_gunzipped(_blob(Path(image.archive), layer["digest"]))) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in names:
                    data = tar.extractfile(member) if member.isfile() else None
                    found[name] = (member, data.read() if data else b"")
    return found


def _distributions(paths: set[str]) -> set[str]:
    return {re.sub(r"-[^-]+\.dist-info$", "", Path(p).name).lower().replace("-", "_")
            for p in paths if p.endswith(".dist-info") and "/site-packages/" in p}


def test_the_same_sources_give_the_same_digest(built: dict[str, images.Built], tmp_path: Path) -> None:
    again = images.build("enclave", tmp_path, epoch=images.source_epoch())
    assert again.digest == built["enclave"].digest  # manifest, so config and every layer, the same
    assert _manifest(again) == _manifest(built["enclave"])


def test_the_manifest_lists_every_image(built: dict[str, images.Built]) -> None:
    listed = json.loads((Path(built["enclave"].archive).parent / "images.json").read_text())
    assert {i["name"]: i["digest"] for i in listed} == {n: b.digest for n, b in built.items()}
    for image in built.values():
        print(f"{image.reference}: {image.size_bytes / 1e6:.1f} MB compressed, {image.digest}")


def test_the_enclave_image_holds_only_the_enclave_and_its_libraries(built: dict[str, images.Built]) -> None:
    dists = _distributions(_paths(built["enclave"]))
    assert {"cmcp_core", "cmcp_enclave", "cedarpy", "grpcio"} <= dists, sorted(dists)
    assert not dists & set(NOT_IN_THE_ENCLAVE), sorted(dists & set(NOT_IN_THE_ENCLAVE))
    gateway = _distributions(_paths(built["gateway"]))
    assert {"cmcp_gateway", "uvicorn"} <= gateway and "cmcp_enclave" not in gateway


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_each_image_runs_its_console_script_as_65532_without_pip_or_bytecode(
    built: dict[str, images.Built], name: str
) -> None:
    config = _config(built[name])["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == [ENTRYPOINTS[name]]
    paths = _paths(built[name])
    assert f"opt/cmcp/bin/{ENTRYPOINTS[name]}" in paths
    assert not any("/__pycache__/" in p or p.endswith(".pyc") for p in paths if p.startswith("opt/cmcp"))
    assert not any(p.startswith("opt/cmcp/bin/pip") for p in paths)


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_each_console_script_starts_inside_its_image(built: dict[str, images.Built], name: str) -> None:
    """Its imports resolve from the image alone: ``--help`` parses only after every module loaded."""
    container = subprocess.run(["buildah", "from", "--quiet", f"oci-archive:{built[name].archive}"],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        ran = subprocess.run(["buildah", "run", "--isolation", "chroot", "--user", "65532:65532", container,
                              "--", ENTRYPOINTS[name], "--help"], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert f"usage: {ENTRYPOINTS[name]}" in ran.stdout


def test_the_accounts_and_owners_are_debians_and_dated_by_the_commit(built: dict[str, images.Built]) -> None:
    """/etc/shadow dates the account by the commit, not by the build's day (a build tomorrow gives the
    same digest), and the base keeps Debian's owners: shadow's group, a setgid-shadow chage (a
    directory added to the base made them root's: a setgid-root binary in every image)."""
    entries = _entries(built["enclave"], "etc/shadow", "usr/bin/chage")
    shadow, text = entries["etc/shadow"]
    (account,) = [line for line in text.decode().splitlines() if line.startswith("cmcp:")]
    assert int(account.split(":")[2]) == images.source_epoch() // 86400
    chage, _ = entries["usr/bin/chage"]
    assert shadow.gid == chage.gid == 42  # Debian's shadow group
    assert chage.mode & 0o2000  # still setgid (to shadow)


def test_the_members_wheels_were_built_with_the_locked_setuptools(built: dict[str, images.Built]) -> None:
    lock = (images.ROOT / "uv.lock").read_text()
    locked = re.search(r'^name = "setuptools"\nversion = "([^"]+)"$', lock, re.M)
    assert locked is not None
    wheel = "opt/cmcp/lib/python3.11/site-packages/cmcp_core-0.1.0.dist-info/WHEEL"
    _, text = _entries(built["enclave"], wheel)[wheel]
    assert f"Generator: setuptools ({locked.group(1)})" in text.decode()


# ----------------------------------------------------------------------------- as real containers
# Each image under runc as the chart runs it: read-only root, user 65532, no capabilities, only the
# writable mounts the chart declares (tests/helpers/oci_run.WRITABLE), the console script as PID 1.
# It must do real work there (the enclave decides a call on its worker pool, which needs a temp
# dir; the gateway and guard serve; the operator runs Kopf) and stop on SIGTERM with 0.
STOP_BOUND = 30.0  # the pods' terminationGracePeriodSeconds: the kubelet's SIGKILL comes after it


def _listening(port: int, container: Container) -> None:
    for _ in range(1200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert container.process.poll() is None, container.text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}:\n{container.text()[-3000:]}")


def _logged(needle: str, container: Container) -> None:
    for _ in range(1200):
        if needle in container.text():
            return
        assert container.process.poll() is None, container.text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"never logged {needle!r}:\n{container.text()[-3000:]}")


def _confined(container: Container) -> None:
    """Its user is 65532 and its root file system refuses a write."""
    assert container.exec("id", "-u").stdout.strip() == str(oci_run.USER)
    wrote = container.exec("sh", "-c", "echo x > /opt/cmcp/written")
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr


def _release(tmp_path: Path) -> tuple[DevRelease, list[tuple[Path, str]]]:
    release = write_dev_release(tmp_path / "release")
    return release, [(tmp_path / "release", str(tmp_path / "release"))]  # the same path inside


def _run_enclave(archive: str, tmp_path: Path) -> None:
    data = render_initdata(EXAMPLES / "realistic", audience=DEFAULT_AUDIENCE, route=DEFAULT_ROUTE)
    (tmp_path / "initdata").mkdir()
    (tmp_path / "initdata" / "initdata.toml").write_bytes(data)
    port = free_port()
    container = oci_run.run_image(
        archive, "enclave",
        ["--bundle", "/etc/cmcp/bundle", "--initdata", "/etc/cmcp/initdata/initdata.toml",
         "--tee", "simulated", "--listen", f"127.0.0.1:{port}", "--decision-workers", "1"],
        tmp_path, env=launcher_env(data),
        binds=[(EXAMPLES / "realistic", "/etc/cmcp/bundle"), (tmp_path / "initdata", "/etc/cmcp/initdata")])
    try:
        _listening(port, container)
        _confined(container)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            opened = stub.OpenSession(
                enclave_pb2.OpenSessionRequest(principal="agent://billing", trail=NO_TRAIL))
            decided = stub.Decide(enclave_pb2.DecideRequest(  # large arguments: decided on the worker pool
                session_id=opened.session_id, call_id="1", principal="agent://billing", method="tools/call",
                tool=HELD_TOOL, arguments_json=json.dumps(BIG_ARGUMENTS).encode(),
                arguments_digest=json_digest(BIG_ARGUMENTS), audience=DEFAULT_AUDIENCE))
            assert json.loads(decided.decision_json)["effective"] == "allow"
            subprocess.run(["runc", "kill", container.id, "TERM"], check=True)
            for _ in range(600):  # closed by the stop: the gateway's CloseSession takes its entries
                try:
                    closed = stub.CloseSession(
                        enclave_pb2.CloseSessionRequest(session_id=opened.session_id))
                except grpc.RpcError:
                    time.sleep(0.05)
                    continue
                if any(json.loads(e)["data"].get("reason") == "shutdown" for e in closed.audit_entries):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the stopping enclave never closed the session")
        assert container.process.wait(timeout=STOP_BOUND) == 0, container.text()[-3000:]
        assert '"sessions_closed":1,"audit_entries_undelivered":0' in container.text()
    finally:
        container.remove()


def _run_gateway(archive: str, tmp_path: Path, enclave: EnclaveProcess) -> None:
    release, binds = _release(tmp_path)
    port = free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.json").write_text(json.dumps({
        "listen": f"127.0.0.1:{port}", "state_dir": "/var/lib/cmcp-gateway", "allow_simulated": True,
        "release": release.config(),
        "routes": [{"name": "demo", "upstream": "http://127.0.0.1:9/mcp", "audience": AUDIENCE,
                    "enclaves": [enclave.address], "expected_bundle_hashes": [enclave.bundle_hash]}]}))
    container = oci_run.run_image(archive, "gateway", ["--config", "/etc/cmcp/gateway/gateway.json"],
                                  tmp_path, binds=[*binds, (tmp_path / "config", "/etc/cmcp/gateway")])
    try:
        _listening(port, container)
        _confined(container)
        assert container.stop(within=STOP_BOUND) == 0, container.text()[-3000:]
    finally:
        container.remove()


def _run_guard(archive: str, tmp_path: Path, enclave: EnclaveProcess) -> None:
    release, binds = _release(tmp_path)
    port = free_port()
    container = oci_run.run_image(
        archive, "guard", ["--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:9",
                           "--audience", AUDIENCE, "--enclave", enclave.address,
                           "--expected-bundle-hash", enclave.bundle_hash, "--allow-simulated",
                           *release.argv()],
        tmp_path, binds=binds)
    try:
        _listening(port, container)
        _confined(container)
        assert container.stop(within=STOP_BOUND) == 0, container.text()[-3000:]
    finally:
        container.remove()


def _run_operator(archive: str, tmp_path: Path) -> None:
    release, binds = _release(tmp_path)
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "config").write_text(json.dumps({  # an apiserver that is away: Kopf retries
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    container = oci_run.run_image(
        archive, "operator", ["--namespace", "default", "--enclave-image",
                              "registry.example/cmcp-enclave@sha256:" + "a" * 64, *release.argv()],
        tmp_path, binds=[*binds, (tmp_path / "kube", "/etc/cmcp/kube")],
        env={"KUBECONFIG": "/etc/cmcp/kube/config"})
    try:
        _logged("Initial authentication has finished", container)
        _confined(container)
        assert container.stop(within=STOP_BOUND) == 0, container.text()[-3000:]
        assert "Signal SIGTERM is received. Operator is stopping." in container.text()
    finally:
        container.remove()


@oci_run.needs_runc
@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_each_image_works_read_only_as_65532_and_stops_on_sigterm_as_pid1(
    built: dict[str, images.Built], name: str, tmp_path: Path, enclave: EnclaveProcess
) -> None:
    archive = built[name].archive
    if name == "enclave":
        _run_enclave(archive, tmp_path)
    elif name == "gateway":
        _run_gateway(archive, tmp_path, enclave)
    elif name == "guard":
        _run_guard(archive, tmp_path, enclave)
    else:
        _run_operator(archive, tmp_path)
