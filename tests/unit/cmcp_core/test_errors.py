"""One registry of codes: every code is documented, every code the gateway/guard emit is registered."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cmcp_core.errors import REGISTRY, Code
from tests.paths import ROOT

CODE_LIKE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
EMITTERS = ("gateway", "guard")


def test_registry_covers_every_code() -> None:
    assert set(REGISTRY) == set(Code)
    for code, info in REGISTRY.items():
        assert info.jsonrpc < 0 and 400 <= info.http < 600 and info.summary, code


def test_every_code_is_documented() -> None:
    text = (ROOT / "docs/errors.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([A-Z0-9_]+)`$", text, flags=re.MULTILINE))
    missing = sorted(c.value for c in Code if c.value not in headings)
    assert not missing, f"document these codes in docs/errors.md: {missing}"
    stale = sorted(headings - {c.value for c in Code})
    assert not stale, f"docs/errors.md documents codes that are not registered: {stale}"
    for code in Code:  # each entry says why it happens and what to do
        section = text.split(f"### `{code.value}`", 1)[1].split("### ", 1)[0]
        assert "*Cause.*" in section and "*Fix.*" in section, code


def _emitted(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    literals = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and CODE_LIKE.match(n.value)
    }
    members = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Code"
    }
    return literals, members


def test_codes_emitted_by_gateway_and_guard_are_registered() -> None:
    files = [p for d in EMITTERS for p in (ROOT / d).rglob("*.py")]
    assert len(files) >= 10
    known = {c.value for c in Code}
    for path in files:
        literals, members = _emitted(path)
        assert literals <= known, f"{path}: unregistered code literals {sorted(literals - known)}"
        assert members <= set(Code.__members__), f"{path}: unknown Code members {sorted(members - known)}"
