"""Kata *initdata*: the TOML document the hardware measures, and how its digest is placed.

The operator renders it, Kata hashes the **exact bytes** with the declared algorithm, and
the hardware records the digest: TDX ``MRCONFIGID`` (48 bytes: sha256 zero-padded, sha384
exact) or SNP ``HOST_DATA`` (32 bytes: sha256 exact, sha384/sha512 truncated). The
annotation carries base64 of gzip of the TOML. Rendering is deterministic, so the operator,
the enclave and a verifier all compute the same digest from the same inputs.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import tomllib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cmcp_core import gateway_identity, launch_policy
from cmcp_core.bundle import load_bundle
from cmcp_core.digest import jcs
from cmcp_core.launch_policy import LaunchSpec

ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
INITDATA_VERSION = "0.1.0"
ALGORITHMS = ("sha256", "sha384", "sha512")
CMCP_KEY = "cmcp.json"
POLICY_KEY = "policy.rego"
MAX_INITDATA_BYTES = 256 * 1024
# base64 of gzip of MAX_INITDATA_BYTES that do not compress, with room for the gzip framing
MAX_ANNOTATION_CHARS = 4 * ((MAX_INITDATA_BYTES + 1024) // 3 + 1)
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib inflates exactly one gzip member
TDX_MRCONFIGID_LEN = 48
SNP_HOST_DATA_LEN = 32


class InitdataError(ValueError):
    """Initdata that does not parse, or whose fields are not what cMCP needs."""


@dataclass(frozen=True)
class CmcpEntry:
    """What the cMCP entry of initdata pins; the enclave refuses to serve anything else."""

    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    route: str  # "<namespace>/<McpRoute name>"
    audience: str  # the upstream identity permits are minted for; measured so a host cannot retarget
    launch_policy_digest: str = ""  # sha256 of policy.rego; render() fills it in
    image: str = ""  # the enclave image by digest the launch policy admits; render() fills it in
    # Gateways the enclave takes state-changing calls from (cmcp_core.gateway_identity): raw
    # Ed25519 public keys, base64url. Left out of the document when empty (older initdata).
    gateway_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "audience": self.audience,
            "image": self.image,
            "launch_policy_digest": self.launch_policy_digest,
            "bundle_hash": self.bundle_hash,
            "catalog_hash": self.catalog_hash,
            "enforcement_mode": self.enforcement_mode,
            "route": self.route,
        }
        if self.gateway_keys:
            doc["gateway_keys"] = list(self.gateway_keys)
        return doc


def agent_policy(image: str, command: list[str]) -> str:
    """The launch policy for a spec that only names image and argv (local launchers, tests).

    The operator renders from its full pod spec instead (:class:`LaunchSpec`)."""
    return launch_policy.render(LaunchSpec(image=image, args=tuple(command), env=()))


def _literal(value: str, key: str) -> str:
    if "'''" in value:
        raise InitdataError(f"initdata value for {key} cannot contain three single quotes")
    return f"'''\n{value}'''" if value.endswith("\n") else f"'''\n{value}\n'''"


def render(entry: CmcpEntry, *, image: str = "", command: list[str] | None = None,
           algorithm: str = "sha384", launch: LaunchSpec | None = None) -> bytes:
    """Render the initdata TOML bytes. Same inputs, same bytes, same measurement.

    ``launch`` (the operator's full pod spec) wins over ``image``/``command``. The launch policy's
    digest and the image are written into the cMCP entry so a relying party compares them by name."""
    if algorithm not in ALGORITHMS:
        raise InitdataError(f"unsupported initdata algorithm {algorithm!r}")
    spec = launch or LaunchSpec(image=image, args=tuple(command or ()), env=())
    policy = launch_policy.render(spec)
    entry = replace(entry, launch_policy_digest=launch_policy.digest(policy), image=spec.image)
    cmcp = jcs(entry.to_json()).decode("utf-8")
    lines = [
        f'version = "{INITDATA_VERSION}"',
        f'algorithm = "{algorithm}"',
        "",
        "[data]",
        f'"{CMCP_KEY}" = {_literal(cmcp, CMCP_KEY)}',
        f'"{POLICY_KEY}" = {_literal(policy, POLICY_KEY)}',
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_for_bundle(
    bundle_dir: Path | str,
    *,
    route: str,
    audience: str,
    image: str,
    command: list[str],
    algorithm: str = "sha384",
    gateway_keys: Sequence[str] = (),
) -> bytes:
    """Initdata pinning the bundle in ``bundle_dir`` (its hashes and mode) to ``route``/``audience``.

    The launchers that have the bundle on disk (the local conformance target, the demo, the test
    and benchmark helpers) all render through this one function, so what they hand an enclave is
    exactly what the enclave recomputes from the same files. The operator renders from the hashes
    a PolicyBundle's status carries (it has no bundle directory) and builds its
    :class:`CmcpEntry` directly; both end in :func:`render`."""
    bundle = load_bundle(bundle_dir)
    entry = CmcpEntry(
        bundle_hash=bundle.bundle_hash,
        catalog_hash=bundle.catalog_hash,
        enforcement_mode=bundle.enforcement_mode,
        route=route,
        audience=audience,
        gateway_keys=tuple(gateway_keys),
    )
    return render(entry, image=image, command=command, algorithm=algorithm)


def digest(toml_bytes: bytes) -> bytes:
    """Hash the exact bytes with the algorithm the document declares."""
    return hashlib.new(parse(toml_bytes).algorithm, toml_bytes).digest()


def tdx_mrconfigid(toml_bytes: bytes) -> bytes:
    doc = parse(toml_bytes)
    raw = hashlib.new(doc.algorithm, toml_bytes).digest()
    if len(raw) > TDX_MRCONFIGID_LEN:
        raise InitdataError(f"{doc.algorithm} does not fit TDX MRCONFIGID (48 bytes)")
    return raw.ljust(TDX_MRCONFIGID_LEN, b"\x00")


def snp_host_data(toml_bytes: bytes) -> bytes:
    return digest(toml_bytes)[:SNP_HOST_DATA_LEN]


def expected_measurement(toml_bytes: bytes, platform: str) -> bytes:
    """The value the platform's measured config field must hold for these initdata bytes."""
    if platform in ("tdx", "simulated"):
        return tdx_mrconfigid(toml_bytes)
    if platform in ("snp", "simulated-snp"):
        return snp_host_data(toml_bytes)
    raise InitdataError(f"no initdata measurement rule for platform {platform!r}")


@dataclass(frozen=True)
class Initdata:
    version: str
    algorithm: str
    data: dict[str, str]

    @property
    def cmcp(self) -> CmcpEntry:
        raw = self.data.get(CMCP_KEY)
        if raw is None:
            raise InitdataError(f"initdata has no {CMCP_KEY} entry")
        try:
            doc: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InitdataError(f"{CMCP_KEY} is not JSON: {exc.msg}") from exc
        if not isinstance(doc, dict):
            raise InitdataError(f"{CMCP_KEY} must be a JSON object")
        fields = ("audience", "bundle_hash", "catalog_hash", "enforcement_mode", "route", "image",
                  "launch_policy_digest")
        missing = [f for f in fields if not isinstance(doc.get(f), str)]
        if missing:
            raise InitdataError(f"{CMCP_KEY} lacks string field(s): {', '.join(missing)}")
        keys = doc.get("gateway_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InitdataError(f"{CMCP_KEY} gateway_keys must be a list of strings")
        try:
            gateway_identity.trusted_keys(keys)
        except ValueError as exc:
            raise InitdataError(f"{CMCP_KEY} gateway_keys: not an Ed25519 public key ({exc})") from exc
        return CmcpEntry(**{f: doc[f] for f in fields}, gateway_keys=tuple(keys))


def parse(toml_bytes: bytes) -> Initdata:
    if len(toml_bytes) > MAX_INITDATA_BYTES:
        raise InitdataError(f"initdata is {len(toml_bytes)} bytes, over {MAX_INITDATA_BYTES}")
    try:
        doc = tomllib.loads(toml_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InitdataError(f"initdata is not valid TOML: {exc}") from exc
    version, algorithm, data = doc.get("version"), doc.get("algorithm"), doc.get("data")
    if version != INITDATA_VERSION:
        raise InitdataError(f"initdata version must be {INITDATA_VERSION!r}, got {version!r}")
    if algorithm not in ALGORITHMS:
        raise InitdataError(f"initdata algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InitdataError("initdata [data] must be a table of strings")
    return Initdata(version=version, algorithm=algorithm, data=dict(data))


def encode_annotation(toml_bytes: bytes) -> str:
    """base64(gzip(toml)), with a zero mtime so the annotation is reproducible."""
    return base64.b64encode(gzip.compress(toml_bytes, mtime=0)).decode("ascii")


def decode_annotation(value: str | bytes) -> bytes:
    """The TOML bytes of a ``base64(gzip(toml))`` annotation, bounded before and while inflating.

    A Kata runtime refuses a sandbox whose annotation does not decode; the bounds keep a
    hostile annotation (a gzip bomb) from costing more than :data:`MAX_INITDATA_BYTES`.
    """
    if len(value) > MAX_ANNOTATION_CHARS:
        raise InitdataError(f"initdata annotation is {len(value)} characters, over {MAX_ANNOTATION_CHARS}")
    try:
        packed = base64.b64decode(value, validate=True)
        inflater = zlib.decompressobj(wbits=GZIP_WBITS)
        raw = inflater.decompress(packed, MAX_INITDATA_BYTES + 1)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise InitdataError(f"initdata annotation is not base64 of gzip: {exc}") from exc
    if len(raw) > MAX_INITDATA_BYTES:
        raise InitdataError("initdata annotation expands past the size limit")
    if not inflater.eof or inflater.unused_data:
        raise InitdataError("initdata annotation is not base64 of gzip: not exactly one complete gzip member")
    return raw
