"""The guard's own set of trusted enclave keys, learned only from evidence it appraised.

Addresses come from two places: the fixed ``--enclave`` list and, optionally, a route source
(the operator's ``McpRoute`` status, :mod:`cmcp_core.route_status`) polled on every refresh, so
a pod the operator replaces is attested as soon as it is listed. Either way an address is only
a place to ask: a key is trusted only after *this* process attested it with its own nonce and
policy. From the source the guard also takes the route's target and previous initdata digests
and pins the route's pods to them (every measured byte must be one of them); fixed
``--enclave`` addresses keep the pins they were configured with. The source's keys are never
read.

Every refresh re-attests every listed address; a listed enclave that stops attesting drops out
at once (fail closed). An enclave the source *stops listing* (rollout, scale-down) keeps its
last self-appraised key for ``grace_seconds`` (default: the enclave's permit TTL plus the
verifier's clock skew), so permits it signed just before leaving still verify; then the key
is gone. An unknown key id triggers at most one on-demand refresh per ``min_refresh_seconds``
(an enclave that restarted has a new key), so random key ids cannot turn the guard into an
attestation (or API-server) amplifier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.attestation import AttestedEnclave, AttestPolicy, attest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.permit import CLOCK_SKEW_SECONDS
from cmcp_core.proto import enclave_pb2_grpc
from cmcp_core.route_status import RouteReader
from cmcp_core.verify.gpu_requirement import GpuRequirement

log = logging.getLogger("cmcp.guard")

DEFAULT_PERMIT_TTL_SECONDS = 60  # cmcp-enclave --permit-ttl default
DEFAULT_GRACE_SECONDS = float(DEFAULT_PERMIT_TTL_SECONDS + CLOCK_SKEW_SECONDS)
MAX_SOURCE_ADDRESSES = 256  # a runaway status cannot make one refresh dial thousands of pods


class TrustStore:
    def __init__(
        self,
        endpoints: Sequence[str],
        policy: AttestPolicy,
        *,
        source: RouteReader | None = None,
        refresh_seconds: float = 30.0,
        min_refresh_seconds: float = 1.0,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = list(endpoints)
        self.policy = policy
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.enclaves: dict[str, AttestedEnclave] = {}
        self.failures: dict[str, CmcpError] = {}
        # addresses the source listed last time it answered (kept when it fails: no new trust
        # comes from a failed read, and known enclaves are still re-attested every round)
        self.source_addresses: list[str] = []
        self.route_pins: frozenset[str] = frozenset()  # the route's target/previous initdata digests
        self.route_gpu: GpuRequirement | None = None  # the route's status.gpu: listed pods prove it too
        # source-listed enclaves that left the listing: last self-appraised record + deadline
        self.departed: dict[str, tuple[AttestedEnclave, float]] = {}
        self._next_expiry = float("inf")
        self._last_refresh = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def keys(self) -> Mapping[str, Ed25519PublicKey]:
        """The trusted keys now; a departed enclave's key stops counting at its deadline exactly."""
        if self.clock() >= self._next_expiry:
            self._rebuild_keys()
        return self._keys

    def _rebuild_keys(self) -> None:
        now = self.clock()
        self.departed = {a: (e, d) for a, (e, d) in self.departed.items() if d > now}
        keys = {e.kid: e.key for e, _ in self.departed.values()}
        keys.update({e.kid: e.key for e in self.enclaves.values()})
        self._keys = keys
        self._next_expiry = min((d for _, d in self.departed.values()), default=float("inf"))

    def policy_for(self, address: str) -> AttestPolicy:
        """A pod the route lists is pinned to the route's initdata; a fixed endpoint to what was
        configured for it (a fixed address the route also lists must satisfy the route too)."""
        expected = self.policy.expected
        if address in self.source_addresses:
            return replace(self.policy, expected=replace(expected, initdata_digests=self.route_pins),
                           gpu=self.route_gpu)
        # a fixed endpoint may serve another route (e.g. that route's advisory twin): its own pins
        return replace(self.policy, expected=replace(expected, route=None, initdata_digests=frozenset()))

    async def _attest_one(self, address: str) -> AttestedEnclave | CmcpError:
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                return await attest(enclave_pb2_grpc.EnclaveStub(channel), address, self.policy_for(address))
        except CmcpError as exc:
            return exc
        except Exception as exc:  # e.g. an unparsable address from the source: that one only fails
            return CmcpError(Code.TEE_UNAVAILABLE, f"{address}: cannot attest: {exc}")

    async def _read_source(self) -> None:
        if self.source is None:
            return
        try:
            status = await self.source()
        except Exception as exc:  # API down or forbidden: keep the last listing, add nothing
            log.warning("enclave address source failed", extra={"detail": f"{type(exc).__name__}: {exc}"})
            return
        listed = list(dict.fromkeys(status.attested_endpoints()))
        self.route_pins = status.pinned_initdata()
        try:
            self.route_gpu = GpuRequirement.from_spec(status.gpu)
        except ValueError as exc:  # fail closed: no listed pod of a route with an unreadable GPU need
            log.warning("route GPU requirement unreadable", extra={"detail": str(exc)})
            listed = []
        if len(listed) > MAX_SOURCE_ADDRESSES:
            log.warning("address source listed too many enclaves", extra={"detail": str(len(listed))})
            listed = listed[:MAX_SOURCE_ADDRESSES]
        self.source_addresses = listed

    async def refresh(self) -> None:
        """Re-read the source, re-attest every listed address; trust exactly what verified now
        (plus departed source enclaves still inside their grace period)."""
        async with self._lock:
            previously_listed = set(self.source_addresses)
            await self._read_source()
            addresses = list(dict.fromkeys([*self.endpoints, *self.source_addresses]))
            results = await asyncio.gather(*(self._attest_one(a) for a in addresses))
            enclaves: dict[str, AttestedEnclave] = {}
            failures: dict[str, CmcpError] = {}
            for address, result in zip(addresses, results, strict=True):
                if isinstance(result, CmcpError):
                    failures[address] = result
                    log.warning(
                        "attestation failed",
                        extra={"endpoint": address, "code": str(result.code), "detail": result.detail},
                    )
                else:
                    enclaves[address] = result
            now = self.clock()
            listed = set(addresses)
            departed = {a: v for a, v in self.departed.items() if a not in listed}
            for address, enclave in self.enclaves.items():
                # only a pod the source stopped listing gets a grace period; an endpoint taken
                # out of the fixed list is dropped at once
                if address in previously_listed and address not in listed and self.grace_seconds > 0:
                    departed[address] = (enclave, now + self.grace_seconds)
                    log.info("enclave left the route", extra={"endpoint": address, "kid": enclave.kid})
            self.enclaves, self.failures, self.departed = enclaves, failures, departed
            self._rebuild_keys()
            self._last_refresh = self.clock()

    async def refresh_for_unknown_key(self) -> bool:
        """On-demand refresh, rate-limited; True if it ran."""
        if self.clock() - self._last_refresh < self.min_refresh_seconds:
            return False
        await self.refresh()
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception:  # keep refreshing; a failed round leaves the last verified set
                log.exception("trust refresh failed")

    async def start(self) -> None:
        await self.refresh()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
