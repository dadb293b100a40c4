"""Build the enclave, gateway, guard and operator images (and the demo's upstream) from the one
Dockerfile, reproducibly.

``python -m cmcp_devkit.images`` (``make images``) builds each with ``buildah`` (no Docker
engine) from the repository's ``Dockerfile`` (build argument ``COMPONENT`` selects the image),
on a Python base made from Debian's packages with ``mmdebstrap`` (no registry needs to be
reachable; the Dockerfile keeps the public ``python:*-slim`` base as its default), and
writes each image as an OCI archive beside ``images.json`` (name, reference, digest, size).

Why reproducible: the release manifest pins the enclave image by digest, so the same sources must
give the same digest. Every timestamp is the last commit's (``buildah build --timestamp``, which
also sets the files' times), the base is built once per :data:`BASE_VERSION` with a fixed
``SOURCE_DATE_EPOCH``, and no compiled bytecode (whose headers carry times) enters an image.

Where a TLS-inspecting proxy stands between this machine and PyPI, its CA bundle (the system's)
is mounted for the build's ``pip`` only (``PIP_CERT``); it never enters an image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"  # the workspace's: every image carries it as its tag
BASE_VERSION = "bookworm-2"  # bump to rebuild the base (suite, packages or options below)
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_EPOCH = 1700000000  # the base's SOURCE_DATE_EPOCH: fixed, so the base is the same every time
BASE_REF = f"localhost/cmcp-base:{BASE_VERSION}"
DOCKERFILE = "Dockerfile"  # every image's (build context: the repository root)
# image name (the Dockerfile's COMPONENT) -> the folder of its distribution
COMPONENTS = {
    "enclave": "enclave_pod",
    "gateway": "gateway",
    "guard": "guard",
    "operator": "operator",
}
# the demo's upstream (the dev kit's MCP server and wiretap; the Dockerfile's COMPONENT=demo): built
# on request, for `cmcpctl demo --cluster` and the e2e session, never shipped with the product
DEMO_COMPONENTS = {"demo": "devkit"}
DOCKERFILES = dict.fromkeys([*COMPONENTS, *DEMO_COMPONENTS], DOCKERFILE)  # image name -> its Dockerfile
# images only the tests run (never shipped): built on request, e.g. by the e2e session
TEST_DOCKERFILES = {
    "test-http-echo": "devkit/cmcp_devkit/cluster/http_echo.Dockerfile",
}
ALL_DOCKERFILES = {**DOCKERFILES, **TEST_DOCKERFILES}
# what the Dockerfiles copy from the build context: the inputs of :func:`ensure_images`' cache key
CONTEXT_PATHS = ("pyproject.toml", "uv.lock", ".dockerignore", "core", "enclave_pod", "gateway", "guard",
                 "operator", "devkit",
                 *sorted(set(ALL_DOCKERFILES.values())))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
_MOUNTED_CA = "/etc/ssl/cmcp-build-ca.crt"


class ImagesError(RuntimeError):
    """An image could not be built; the message says what to do."""


@dataclass(frozen=True)
class Built:
    name: str
    reference: str
    digest: str  # the OCI manifest's: what a registry shows and a release pins
    size_bytes: int  # the archive's (compressed layers, config and manifest)
    archive: str


def cache_root() -> Path:
    return Path(os.environ.get("CMCP_IMAGES_CACHE", Path.home() / ".cache" / "cmcp-images"))


def _log(message: str) -> None:
    print(f"[cmcp images] {message}", file=sys.stderr, flush=True)


def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImagesError(f"{' '.join(argv[:3])} … failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def tools() -> None:
    """``buildah`` and ``mmdebstrap`` are there, or say how to get them."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        raise ImagesError(f"{' and '.join(missing)} not found: `apt-get install buildah mmdebstrap` "
                          "(scripts/setup.sh does, as root)")


def source_epoch() -> int:
    """The last commit's time: every timestamp in the images (the same commit, the same digests)."""
    try:
        return int(_run("git", "log", "-1", "--format=%ct", cwd=ROOT).strip())
    except (ImagesError, ValueError):
        return BASE_EPOCH  # not a git checkout (an sdist): still fixed


def _has_image(reference: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", reference],
                          capture_output=True).returncode == 0


def mmdebstrap_argv(target: Path) -> list[str]:
    """The base's root file system as a tarball. A tar keeps Debian's owners (root:shadow
    ``/etc/shadow``, the setgid-shadow ``chage``): ``buildah add`` of a directory makes every file
    root:root (a setgid-root ``chage`` in every image). No device nodes: the runtime makes /dev."""
    return ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "--skip=output/dev",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
            BASE_SUITE, str(target)]


def ensure_base() -> str:
    """The Debian Python base in buildah's store (built once per :data:`BASE_VERSION`)."""
    if _has_image(BASE_REF):
        return BASE_REF
    rootfs = cache_root() / f"base-{BASE_VERSION}.tar"
    if not rootfs.is_file():
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        _log(f"building the base rootfs with mmdebstrap ({BASE_SUITE}: {', '.join(BASE_PACKAGES)})")
        partial = rootfs.with_name(f".{rootfs.name}.partial")
        _run("env", f"SOURCE_DATE_EPOCH={BASE_EPOCH}", *mmdebstrap_argv(partial))
        partial.replace(rootfs)
    container = _run("buildah", "from", "scratch").strip()
    try:
        _run("buildah", "add", "--quiet", container, str(rootfs), "/")
        _run("buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", '["/usr/bin/python3"]', container)
        _run("buildah", "commit", "--quiet", "--timestamp", str(BASE_EPOCH), container, BASE_REF)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return BASE_REF


def build(name: str, out_dir: Path, *, epoch: int, base: str = BASE_REF, tag: str = VERSION) -> Built:
    """One image from the Dockerfile (``COMPONENT=name``), as an OCI archive in ``out_dir``."""
    reference = f"localhost/cmcp-{name}:{tag}"
    # buildah's store is the machine's: the build and the archive's push use a tag of their own, so
    # builds side by side (two checkouts, a test's clean-up) cannot swap images; `reference` is set after
    local = f"{reference}-build{os.getpid()}"
    argv = ["buildah", "build", "--quiet", "--layers=false", "--isolation", "chroot", "--network", "host",
            "--timestamp", str(epoch), "--build-arg", f"PYTHON_IMAGE={base}",
            "--build-arg", f"SOURCE_DATE_EPOCH={epoch}",  # useradd's /etc/shadow date: not the build's day
            *(["--build-arg", f"COMPONENT={name}"] if name in DOCKERFILES else []),  # selects the image
            "-f", ALL_DOCKERFILES[name], "-t", local]
    if HOST_CA.is_file():
        argv += ["--volume", f"{HOST_CA}:{_MOUNTED_CA}:ro", "--build-arg", f"PIP_CERT={_MOUNTED_CA}"]
    started = time.monotonic()
    _run(*argv, ".", cwd=ROOT)
    archive = out_dir / f"cmcp-{name}.oci.tar"
    archive.unlink(missing_ok=True)
    try:
        _run("buildah", "push", "--quiet", local, f"oci-archive:{archive}:{reference}")
        _run("buildah", "tag", local, reference)  # what `buildah push` to a registry starts from
    finally:
        subprocess.run(["buildah", "rmi", local], capture_output=True)
    built = Built(name, reference, archive_digest(archive), archive.stat().st_size, str(archive))
    _log(f"{reference} {built.digest} ({built.size_bytes / 1e6:.1f} MB, {time.monotonic() - started:.0f} s)")
    return built


def archive_digest(archive: Path) -> str:
    """The digest of the (only) manifest in an OCI archive."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImagesError(f"{archive} has no index.json")
        index = json.load(member)
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ImagesError(f"{archive} holds {len(manifests)} manifests, expected one")
    return str(manifests[0]["digest"])


def build_all(out_dir: Path, names: list[str] | None = None) -> list[Built]:
    tools()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = ensure_base()
    epoch = source_epoch()
    built = [build(name, out_dir, epoch=epoch, base=base) for name in (names or list(COMPONENTS))]
    (out_dir / "images.json").write_text(json.dumps([asdict(b) for b in built], indent=2) + "\n")
    return built


def inputs_key(names: list[str]) -> str:
    """A digest of everything a build of ``names`` reads: the base's version, the images asked for and
    the build context's files (tracked and untracked, not ignored). Equal keys, equal images."""
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                  *CONTEXT_PATHS, cwd=ROOT)
    digest = hashlib.sha256(f"{BASE_VERSION}\n{','.join(sorted(names))}\n".encode())
    for rel in sorted(set(filter(None, listed.split("\0")))):
        path = ROOT / rel
        if path.suffix == ".pyc" or "__pycache__" in path.parts or not path.is_file():
            continue
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def ensure_cluster_images() -> dict[str, Built]:
    """Every image the local cluster's real node runs (the components, the demo's upstream, the test
    images), from one cache the e2e session and the operator benchmark share, so whichever runs
    first builds them and the other finds them (:func:`ensure_images`)."""
    return ensure_images(cache_root() / "e2e", list(ALL_DOCKERFILES))


def ensure_images(cache: Path, names: list[str], *, keep: int = 2) -> dict[str, Built]:
    """``names`` built into ``cache/<inputs key>``, or the archives already there when nothing they are
    built from changed (warm e2e sessions, also from a fresh clone of the same sources). Keyed by
    :func:`inputs_key`, not by the commit: a new commit of unchanged sources reuses the images (their
    timestamps are the earlier commit's). Only the ``keep`` most recently used builds stay."""
    key = inputs_key(names)
    out_dir = cache / key[:16]
    record = out_dir / "inputs.json"  # beside build_all's images.json
    try:
        doc = json.loads(record.read_text())
        if doc.get("inputs") == key:
            cached = {b["name"]: Built(**b) for b in doc["images"]}
            if set(cached) == set(names) and all(Path(b.archive).is_file() for b in cached.values()):
                record.touch()  # most recently used
                return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    built = build_all(out_dir, names)
    record.write_text(json.dumps({"inputs": key, "images": [asdict(b) for b in built]}, indent=2) + "\n")
    _prune(cache, keep)
    return {b.name: b for b in built}


def _prune(cache: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used builds under ``cache`` (each is ~0.5 GB)."""
    def used(build_dir: Path) -> float:
        try:
            return (build_dir / "inputs.json").stat().st_mtime
        except OSError:
            return 0.0

    builds = sorted((d for d in cache.iterdir() if d.is_dir()), key=used, reverse=True)
    for stale in builds[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmcp_devkit.images", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"images to build (default: the product's, {', '.join(COMPONENTS)}; "
                        f"also the demo's: {', '.join(DEMO_COMPONENTS)}; "
                        f"test images: {', '.join(TEST_DOCKERFILES)})")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "images",
                        help="where the OCI archives and images.json go (default: .cache/images)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ALL_DOCKERFILES))
    if unknown:
        parser.error(f"no such image: {', '.join(unknown)} (choose from {', '.join(ALL_DOCKERFILES)})")
    try:
        built = build_all(args.out, args.names or None)
    except ImagesError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    for image in built:
        print(f"{image.reference}\t{image.digest}\t{image.size_bytes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
