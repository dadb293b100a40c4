"""The guard's own set of trusted enclave keys, learned only from evidence it appraised.

Keys of enclaves that stop attesting drop out at the next refresh. An unknown key id triggers
at most one on-demand refresh per ``min_refresh_seconds`` (an enclave that restarted has a new
key), so random key ids cannot turn the guard into an attestation amplifier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.attestation import AttestedEnclave, AttestPolicy, attest
from cmcp_core.errors import CmcpError
from cmcp_core.proto import enclave_pb2_grpc

log = logging.getLogger("cmcp.guard")


class TrustStore:
    def __init__(
        self,
        endpoints: Sequence[str],
        policy: AttestPolicy,
        *,
        refresh_seconds: float = 30.0,
        min_refresh_seconds: float = 1.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.policy = policy
        self.refresh_seconds = refresh_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.enclaves: dict[str, AttestedEnclave] = {}
        self.failures: dict[str, CmcpError] = {}
        self._last_refresh = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def keys(self) -> Mapping[str, Ed25519PublicKey]:
        return self._keys

    async def _attest_one(self, address: str) -> AttestedEnclave | CmcpError:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                return await attest(enclave_pb2_grpc.EnclaveStub(channel), address, self.policy)
            except CmcpError as exc:
                return exc

    async def refresh(self) -> None:
        """Re-attest every endpoint; the key set becomes exactly the ones that verified now."""
        async with self._lock:
            results = await asyncio.gather(*(self._attest_one(a) for a in self.endpoints))
            enclaves: dict[str, AttestedEnclave] = {}
            failures: dict[str, CmcpError] = {}
            for address, result in zip(self.endpoints, results, strict=True):
                if isinstance(result, CmcpError):
                    failures[address] = result
                    log.warning(
                        "attestation failed",
                        extra={"endpoint": address, "code": str(result.code), "detail": result.detail},
                    )
                else:
                    enclaves[address] = result
            self.enclaves, self.failures = enclaves, failures
            self._keys = {e.kid: e.key for e in enclaves.values()}
            self._last_refresh = time.monotonic()

    async def refresh_for_unknown_key(self) -> bool:
        """On-demand refresh, rate-limited; True if it ran."""
        if time.monotonic() - self._last_refresh < self.min_refresh_seconds:
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
