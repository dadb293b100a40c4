"""The images, built for real from the project's Dockerfiles (``cmcp_devkit.images``: buildah on a
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
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cmcp_devkit import images

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("buildah") is None or shutil.which("mmdebstrap") is None,
    reason="building images needs root, buildah and mmdebstrap (scripts/setup.sh installs them as root)",
)

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
