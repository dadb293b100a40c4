"""Fuzzed inputs never crash the enclave and never allow what the policy forbids."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_core.digest import json_digest
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.judging import RequestError
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import serve
from tests.helpers.enclave_calls import known
from tests.paths import EXAMPLES

_ENCLAVE: list[Enclave] = []


def _enclave() -> Enclave:
    if not _ENCLAVE:
        _ENCLAVE.append(inprocess_enclave(EXAMPLES / "realistic", Path(tempfile.mkdtemp())))
    return _ENCLAVE[0]


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amount=_json, extra=st.dictionaries(st.text(max_size=10), _json, max_size=3))
def test_transfer_is_never_allowed_above_the_limit(amount: Any, extra: dict[str, Any]) -> None:
    enc = _enclave()
    args = {**extra, "amount": amount}
    try:
        res = enc.decide(session_id="fuzz", call_id=f"c{enc.audit_entries_total}", principal="agent",
                         method="tools/call", tool="payments.transfer",
                         arguments_json=json.dumps(args).encode(), arguments_digest=json_digest(args),
                         audience=DEFAULT_AUDIENCE)
    except RequestError:
        return  # refused without a decision (e.g. no canonical form): fine
    except ValueError:
        return  # json_digest in the test itself may refuse (e.g. huge ints)
    if res.document["effective"] == "allow":
        ok_amount = amount is None or (type(amount) is int and amount <= 10000)
        assert ok_amount, (amount, res.document)
        assert res.permit
    else:
        assert not res.permit
    if enc.sessions[known(enc, "fuzz")].call_count > 150:
        enc.close(known(enc, "fuzz"))
        enc.closed.clear()


@pytest.mark.parametrize("seed", range(5))
async def test_random_bytes_on_the_wire_get_errors(tmp_path: Path, seed: int) -> None:
    import random

    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    server, port = await serve(enc, "127.0.0.1:0", Metrics())
    rng = random.Random(seed)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("Decide", "Attest", "Complete", "CloseSession", "ResetSession", "ListTools"):
                call = channel.unary_unary(f"/cmcp.enclave.v1.Enclave/{method}")
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(payload)
    finally:
        await server.stop(None)
    assert enc.audit_entries_total == 0  # nothing was decided from garbage
