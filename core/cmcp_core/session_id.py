"""Session ids the enclave mints: ``<owner>.<random>``, where ``<owner>`` names the minting enclave.

The enclave, not the gateway, chooses a session's id, so an id can never be chosen twice or
reused after its close (the enclave refuses any id it did not mint and does not hold). The
``<owner>`` part is the first ``OWNER_CHARS`` characters of the enclave key id (kid, a base64url
thumbprint), so any gateway replica learns from the id alone which enclave holds the session.
``<random>`` is 128 bits from the OS CSPRNG, base64url without padding (22 characters).
"""

from __future__ import annotations

import re
import secrets

from cmcp_core.digest import b64url

OWNER_CHARS = 16
RANDOM_BYTES = 16  # 128 bits -> 22 base64url characters
_SHAPE = re.compile(rf"([A-Za-z0-9_-]{{{OWNER_CHARS}}})\.([A-Za-z0-9_-]{{22}})")


def mint(kid: str) -> str:
    """A fresh session id owned by the enclave whose key id is ``kid``."""
    if len(kid) < OWNER_CHARS:
        raise ValueError(f"kid must have at least {OWNER_CHARS} characters")
    return f"{kid[:OWNER_CHARS]}.{b64url(secrets.token_bytes(RANDOM_BYTES))}"


def owner_prefix(session_id: str) -> str | None:
    """The owner part of a well-formed id (a prefix of the owner's kid); ``None`` when malformed."""
    match = _SHAPE.fullmatch(session_id)
    return match.group(1) if match else None


def owned_by(session_id: str, kid: str) -> bool:
    """Whether ``session_id`` names the enclave with key id ``kid`` as its owner."""
    owner = owner_prefix(session_id)
    return owner is not None and kid.startswith(owner)
