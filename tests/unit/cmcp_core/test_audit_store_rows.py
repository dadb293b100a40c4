"""Rows of the audit store: the key fields of a canonical entry, and an open entry's principal."""

from __future__ import annotations

import json

import pytest

from cmcp_core.audit_store_rows import principal_of, row_of, rows_of
from cmcp_core.errors import CmcpError, Code

ENTRY = {"v": 1, "kid": "kid", "session_id": "sess", "seq": 3, "hash": "sha256:" + "a" * 64,
         "kind": "open", "ts": 17, "data": {"principal": "alice"}, "prev": "genesis", "sig": "x"}


def test_a_row_keeps_the_key_fields_and_the_exact_bytes() -> None:
    raw = json.dumps(ENTRY).encode()
    row = row_of(raw)
    assert (row.kid, row.chain, row.seq, row.hash, row.kind, row.ts) == (
        "kid", "sess", 3, ENTRY["hash"], "open", 17)
    assert row.entry == raw and rows_of([raw, raw]) == [row, row]
    assert principal_of(raw) == "alice"


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"kid": "k"}', json.dumps({**ENTRY, "seq": "x"}).encode(),
                                 json.dumps({**ENTRY, "data": "text"}).encode()])
def test_anything_else_is_malformed(raw: bytes) -> None:
    with pytest.raises(CmcpError) as err:
        row_of(raw)
    assert err.value.code is Code.AUDIT_MALFORMED


def test_no_principal_where_none_is_named() -> None:
    assert principal_of(b"nope") is None
    assert principal_of(json.dumps({**ENTRY, "data": {"principal": 7}}).encode()) is None
