"""cmcp_devkit.cluster.oci: the one-layer OCI image archives the real node imports."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cmcp_devkit.cluster.oci import ImageFile, image_archive, layer_tar, write_image_archive


def _members(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m)
            out[m.name] = f.read() if f else None
    return out


def test_archive_is_an_oci_layout_whose_digests_and_name_check_out() -> None:
    data = image_archive("localhost/x/pause:v1", [ImageFile("/pause", b"\x7fELF", 0o755)],
                         entrypoint=["/pause"], user="65535:65535")
    members = _members(data)
    assert json.loads(members["oci-layout"] or b"") == {"imageLayoutVersion": "1.0.0"}

    def blob(desc: dict[str, object]) -> bytes:
        content = members[f"blobs/sha256/{str(desc['digest']).split(':')[1]}"] or b""
        assert hashlib.sha256(content).hexdigest() == str(desc["digest"]).split(":")[1]
        assert len(content) == desc["size"]
        return content

    index = json.loads(members["index.json"] or b"")
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x/pause:v1"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads(blob(entry))
    config = json.loads(blob(manifest["config"]))
    layer = blob(manifest["layers"][0])
    assert config["config"]["Entrypoint"] == ["/pause"] and config["config"]["User"] == "65535:65535"
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer).hexdigest()}"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        (pause,) = tf.getmembers()
        assert pause.name == "pause" and pause.mode == 0o755 and pause.mtime == 0 and pause.uid == 0


def test_layer_has_parent_dirs_and_is_deterministic() -> None:
    files = [ImageFile("/app/bin/tool", b"x", 0o755), ImageFile("/app/conf", b"y")]
    layer = layer_tar(files)
    assert layer == layer_tar(list(reversed(files)))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        assert [(m.name, m.isdir()) for m in tf.getmembers()] == [
            ("app", True), ("app/bin", True), ("app/bin/tool", False), ("app/conf", False),
        ]
    with pytest.raises(ValueError, match="absolute"):
        layer_tar([ImageFile("relative", b"")])


def test_untagged_names_are_latest_and_the_write_is_atomic(tmp_path: Path) -> None:
    files = [ImageFile("/f", b"")]
    path = write_image_archive(tmp_path / "a.tar", "localhost:5000/img", files, entrypoint=["/f"])
    index = json.loads(_members(path.read_bytes())["index.json"] or b"")
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert not (tmp_path / ".a.tar.partial").exists()
