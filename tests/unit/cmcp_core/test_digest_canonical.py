"""The fast canonical JSON (``cmcp_core.digest.canonical``) must be byte-identical to RFC 8785
(``rfc8785``) everywhere it is used, or verifiers would reject honest signatures and hashes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.digest import canonical, jcs

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False), st.text(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x40)),
    st.text(alphabet=st.sampled_from("aé😀\ue000\uffff\x00\x1f\x7f\u2028\"\\")),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(
        st.text(max_size=6), st.text(alphabet=st.sampled_from("aZé😀\ue000\uffff_"), max_size=3)),
        inner, max_size=4)), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_canonical_equals_rfc8785(value: Any) -> None:
    try:
        expected = jcs(value)
    except Exception:
        try:
            canonical(value)
        except Exception:
            return
        raise AssertionError("canonical() accepted a value rfc8785 refuses") from None
    assert canonical(value) == expected


def test_known_tricky_values() -> None:
    for value in ({"\ue000": 1, "😀": 2, "a": 3}, {"k": "\x00\x08\x1f\u2028"}, [2**53 - 1, -(2**53) + 1],
                  {"f": 1.0, "g": 1e21}, {"résumé": "Zoë"}):
        assert canonical(value) == jcs(value)


def test_permit_and_decision_bytes_are_jcs() -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cmcp_core import permit

    key = Ed25519PrivateKey.generate()
    token = permit.mint(key, session_id="sé", call_id="c", tool="résumé.parse", args_digest="sha256:00",
                        audience="urn:a", bundle_hash="sha256:11", ttl_seconds=5)
    _, body, _ = permit.decode(token)
    assert body == jcs(json.loads(body))
