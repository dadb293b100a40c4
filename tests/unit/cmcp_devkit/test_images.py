"""cmcp_devkit.images without building: reading an OCI archive's digest, refusing what it cannot
pin, and the command line."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cmcp_devkit import images


def _archive(path: Path, index: dict[str, object]) -> Path:
    data = json.dumps(index).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_the_digest_is_the_one_manifests(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tar", {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "ab" * 32}]})
    assert images.archive_digest(archive) == "sha256:" + "ab" * 32


def test_an_archive_with_several_manifests_has_no_one_digest(tmp_path: Path) -> None:
    manifest = {"digest": "sha256:" + "ab" * 32}
    archive = _archive(tmp_path / "a.tar", {"manifests": [manifest, manifest]})
    with pytest.raises(images.ImagesError, match="2 manifests"):
        images.archive_digest(archive)


def test_an_unknown_image_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        images.main(["enclave", "database"])
    assert stopped.value.code == 2
    assert "no such image: database" in capsys.readouterr().err


def test_one_dockerfile_has_a_stage_for_every_component() -> None:
    text = (images.ROOT / images.DOCKERFILE).read_text()
    assert "ARG PYTHON_IMAGE=python:3.11" in text  # the public base stays the default
    assert "USER 65532:65532" in text
    for name, folder in images.COMPONENTS.items():
        assert f"FROM runtime AS image-{name}\n" in text, name
        assert f'ENTRYPOINT ["cmcp-{name}"]' in text, name
        assert (images.ROOT / folder / "pyproject.toml").is_file(), folder
        assert f"COPY {folder} ./{folder}\n" in text, folder


def test_each_build_selects_its_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one Dockerfile, with COMPONENT set to the image's name (the public base is only a default)."""
    ran: list[tuple[str, ...]] = []

    def run(*argv: str, cwd: Path | None = None) -> str:
        ran.append(argv)
        if argv[:2] == ("buildah", "push"):
            _archive(Path(argv[-1].split(":")[1]), {"manifests": [{"digest": "sha256:" + "cd" * 32}]})
        return ""

    monkeypatch.setattr(images, "_run", run)
    monkeypatch.setattr(images.subprocess, "run", lambda *a, **k: None)
    built = images.build("guard", tmp_path, epoch=1, base="localhost/base:1")
    (build,) = [argv for argv in ran if argv[:2] == ("buildah", "build")]
    assert "COMPONENT=guard" in build and "PYTHON_IMAGE=localhost/base:1" in build
    assert build[build.index("-f") + 1] == "Dockerfile"
    assert built.digest == "sha256:" + "cd" * 32


def test_the_base_is_a_tarball_without_device_nodes(tmp_path: Path) -> None:
    """A tar keeps Debian's file owners (a directory added with buildah would not)."""
    argv = images.mmdebstrap_argv(tmp_path / "base.tar")
    assert argv[0] == "mmdebstrap" and "--format=tar" in argv and "--skip=output/dev" in argv
    assert argv[-2:] == [images.BASE_SUITE, str(tmp_path / "base.tar")]


def test_every_runtime_stage_takes_the_commit_time() -> None:
    """useradd dates /etc/shadow by SOURCE_DATE_EPOCH, so the final stage must declare it."""
    text = (images.ROOT / images.DOCKERFILE).read_text()
    runtime = text[text.index("AS runtime\n"):text.index("AS image-")]
    assert "\nARG SOURCE_DATE_EPOCH\n" in runtime


def test_the_members_wheels_are_built_with_the_locked_setuptools() -> None:
    """Its version is written into the members' dist-info (WHEEL): PyPI's newest would move the digest."""
    import re

    lock = (images.ROOT / "uv.lock").read_text()
    assert len(re.findall(r'^name = "setuptools"\nversion = "[^"]+"$', lock, re.M)) == 1
    text = (images.ROOT / images.DOCKERFILE).read_text()
    assert "uv.lock > build-constraints.txt" in text and "test -s build-constraints.txt" in text
    pinned = r"PIP_CONSTRAINT=/src/build-constraints.txt \\\n +\S+ --python \S+ install --no-deps"
    assert re.search(pinned, text)



def _fake_build(out_dir: Path, names: list[str] | None = None) -> list[images.Built]:
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for name in names or []:
        archive = out_dir / f"cmcp-{name}.oci.tar"
        archive.write_bytes(b"x")
        reference = f"localhost/cmcp-{name}:0.1.0"
        built.append(images.Built(name, reference, "sha256:" + "ab" * 32, 1, str(archive)))
    _fake_build.calls += 1  # type: ignore[attr-defined]
    return built


def test_ensure_images_builds_once_while_the_sources_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(images, "build_all", _fake_build)
    key = ["k1"]
    monkeypatch.setattr(images, "inputs_key", lambda names: key[0])
    names = ["enclave", "test-http-echo"]
    first = images.ensure_images(tmp_path, names)
    assert set(first) == {"enclave", "test-http-echo"}
    assert images.ensure_images(tmp_path, names) == first
    assert _fake_build.calls == 1  # type: ignore[attr-defined]
    key[0] = "k2"  # a source changed
    second = images.ensure_images(tmp_path, names)
    assert _fake_build.calls == 2  # type: ignore[attr-defined]
    Path(second["enclave"].archive).unlink()  # an archive went missing
    images.ensure_images(tmp_path, names)
    assert _fake_build.calls == 3  # type: ignore[attr-defined]


def test_only_the_most_recently_used_builds_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "build_all", _fake_build)
    key = ["k1"]
    monkeypatch.setattr(images, "inputs_key", lambda names: key[0])
    for k in ("k1", "k2", "k3"):
        key[0] = k
        images.ensure_images(tmp_path, ["enclave"], keep=2)
    assert sorted(d.name for d in tmp_path.iterdir()) == ["k2", "k3"]


def test_the_cluster_images_are_every_image_in_the_one_shared_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The e2e session and the operator benchmark ask for the same set in the same place: whichever
    runs first builds, the other reuses (a different set would be another key, a second build)."""
    monkeypatch.setenv("CMCP_IMAGES_CACHE", str(tmp_path))
    monkeypatch.setattr(images, "build_all", _fake_build)
    monkeypatch.setattr(images, "inputs_key", lambda names: "k1")
    _fake_build.calls = 0  # type: ignore[attr-defined]
    built = images.ensure_cluster_images()
    assert set(built) == set(images.ALL_DOCKERFILES)
    assert Path(built["enclave"].archive).parent.parent == tmp_path / "e2e"
    assert images.ensure_cluster_images() == built and _fake_build.calls == 1  # type: ignore[attr-defined]


def test_the_inputs_key_follows_the_build_context_and_the_names() -> None:
    key = images.inputs_key(["enclave"])
    assert key == images.inputs_key(["enclave"])
    assert key != images.inputs_key(["enclave", "guard"])


def test_the_test_images_build_from_their_own_dockerfiles_and_never_ship() -> None:
    assert not set(images.TEST_DOCKERFILES) & set(images.DOCKERFILES)
    for dockerfile in images.TEST_DOCKERFILES.values():
        assert (images.ROOT / dockerfile).is_file()
        assert dockerfile in images.CONTEXT_PATHS


def test_the_demo_image_comes_from_the_same_dockerfile_and_never_with_the_product() -> None:
    """The demo's upstream (dev kit server and wiretap) is built on request only: the product's
    images and `make images` stay the four components."""
    text = (images.ROOT / images.DOCKERFILE).read_text()
    assert "FROM runtime AS image-demo\n" in text
    assert "demo) package=devkit; set -- ./enclave_pod ./guard ./devkit ;;" in text
    assert images.DOCKERFILES["demo"] == images.DOCKERFILE and "demo" not in images.COMPONENTS
