"""Session ids that name their owner: ``<owner>.<random>``, minted by the enclave that holds the session.

``<owner>`` is the first 16 characters of the enclave's key id (its base64url thumbprint) and
``<random>`` 22 base64url characters (128 bits). Any gateway replica learns from the id alone
which attested enclave holds the session, so a replica that never saw it can still route it,
and never to another enclave: the owner must still be attested with a key of that prefix.
"""

from __future__ import annotations

import re
import secrets

from cmcp_core.digest import b64url

OWNER_CHARS = 16
RANDOM_BYTES = 16  # 128 bits -> 22 base64url characters
_ID = re.compile(r"([A-Za-z0-9_-]{16})\.[A-Za-z0-9_-]{22}")


def mint(kid: str) -> str:
    """A fresh session id owned by the enclave whose key id is ``kid``."""
    owner = kid[:OWNER_CHARS]
    if not re.fullmatch(r"[A-Za-z0-9_-]{16}", owner):
        raise ValueError("a key id must start with 16 base64url characters")
    return f"{owner}.{b64url(secrets.token_bytes(RANDOM_BYTES))}"


def owner_prefix(session_id: str) -> str | None:
    """The owner part of a well-formed id (a prefix of the owner's kid); None when malformed."""
    match = _ID.fullmatch(session_id)
    return match.group(1) if match else None
