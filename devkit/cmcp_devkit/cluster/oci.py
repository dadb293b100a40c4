"""Write a one-layer OCI image archive (an OCI image layout in a tar) from a few files.

Why by hand: the real node's containerd reaches no registry, so the images it runs (the pause
image of every pod sandbox, tiny test images) are imported from archives
(``ctr images import``). A static binary plus an image config needs no image builder.
The output is deterministic: same files, same bytes, same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class ImageFile:
    """A file of the image's only layer: ``path`` inside the image (absolute), its bytes and mode."""

    path: str
    data: bytes
    mode: int = 0o644


def _tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, size: int = 0, mode: int = 0o644, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
    return info


def layer_tar(files: list[ImageFile]) -> bytes:
    """The layer: parent directories first (mode 755), then the files, all owned by root, mtime 0."""
    dirs: set[str] = set()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for f in sorted(files, key=lambda f: f.path):
        if not f.path.startswith("/"):
            raise ValueError(f"image path must be absolute: {f.path!r}")
        parts = f.path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((_info(d + "/", mode=0o755, directory=True), None))
        entries.append((_info("/".join(parts), len(f.data), f.mode), f.data))
    return _tar_bytes(entries)


def _descriptor(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def image_archive(
    name: str,
    files: list[ImageFile],
    *,
    entrypoint: list[str],
    user: str = "",
    arch: str = "amd64",
) -> bytes:
    """An OCI layout tar holding one linux image called ``name`` (``ctr images import`` keeps the name)."""
    layer = layer_tar(files)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": user, "WorkingDir": "/",
                       "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
            "history": [{"created_by": "cmcp_devkit.cluster.oci"}],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [_descriptor(LAYER_MEDIA_TYPE, layer)],
        },
        sort_keys=True,
    ).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                _descriptor(
                    MANIFEST_MEDIA_TYPE,
                    manifest,
                    platform={"architecture": arch, "os": "linux"},
                    annotations={"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
                )
            ],
        },
        sort_keys=True,
    ).encode()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("oci-layout", 30), b'{"imageLayoutVersion":"1.0.0"}'),
        (_info("index.json", len(index)), index),
        (_info("blobs/", mode=0o755, directory=True), None),
        (_info("blobs/sha256/", mode=0o755, directory=True), None),
    ]
    for blob in (layer, config, manifest):
        entries.append((_info(f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", len(blob)), blob))
    return _tar_bytes(entries)


def write_image_archive(
    path: Path, name: str, files: list[ImageFile], *, entrypoint: list[str], user: str = ""
) -> Path:
    """:func:`image_archive` written atomically to ``path``."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(image_archive(name, files, entrypoint=entrypoint, user=user))
    tmp.replace(path)
    return path
