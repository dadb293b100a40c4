"""Docs that do not rot: every command shown in ``README.md`` and ``docs/*.md`` is checked.

Convention for doc authors (also in docs/ARCHITECTURE.md, "Docs that do not rot"):

* **Runnable examples** go in a fenced block tagged ``console``. Each line starting with ``$ ``
  is *executed* by this test with ``bash`` (the venv's ``bin`` first on ``PATH``). All console
  blocks of one document run in order in one fresh scratch directory where ``examples/`` and
  ``tests/`` link to the repository's, so use real paths (``examples/realistic``,
  ``tests/data/...``) or files an earlier ``$`` line of the same document created
  (``demo-out/...``). The command must exit 0, or the code given by a
  trailing ``# exit N``. Lines after a ``$`` line are its expected output: each must appear in
  what the command printed (whitespace-insensitive); write ``…`` for parts that vary (hashes,
  ids), and the fragments between them must appear in that order.
* **Synopses** (placeholders such as ``HEX``, ``[--flag ...]``, files the reader brings) go in
  any other fenced block (``sh``, ``bash``, untagged). Their command lines are checked
  statically: ``cmcpctl`` — the sub-command exists and every ``--flag`` is one of its options;
  ``make X`` — target ``X`` exists in the Makefile; ``python -m M`` — module ``M`` imports;
  ``kubectl`` / ``helm`` — the verb exists (asked of the cached binaries when present), flags
  appear in its ``--help``, resource types are built-in or defined in ``crds/``, and ``-f`` files
  and chart paths exist; ``cmcp-enclave`` / ``cmcp-gateway`` / ``cmcp-guard`` /
  ``cmcp-operator`` — every ``--flag`` appears in the script's ``--help``. A line ``# ...`` and
  text after `` # `` are comments.
* **Python examples** in a ``python`` block preceded by ``<!-- docs-test: exec -->`` are run
  with the venv's interpreter in the same kind of scratch directory; they must exit 0 (use
  ``assert`` to state what the example shows).
* A block that must not be checked at all (rare: output of another tool that happens to start
  with ``kubectl``) is preceded by ``<!-- docs-test: skip REASON -->``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from cmcp_ctl.main import build_parser
from tests.paths import ROOT

REPO = ROOT
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = ("cmcp-enclave", "cmcp-gateway", "cmcp-guard", "cmcp-operator")
PREFIXES = ("cmcpctl", "make", "python -m", "kubectl", "helm", *SCRIPTS)
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s+(\S.*?)\s*-->")
EXEC_MARK = re.compile(r"<!--\s*docs-test:\s*exec\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
BUILTIN_RESOURCES = {
    "pods",
    "pod",
    "po",
    "events",
    "event",
    "ev",
    "deployments",
    "deployment",
    "deploy",
    "services",
    "service",
    "svc",
    "nodes",
    "node",
    "no",
    "runtimeclasses",
    "runtimeclass",
    "configmaps",
    "configmap",
    "cm",
    "secrets",
    "secret",
    "namespaces",
    "namespace",
    "ns",
    "endpoints",
    "endpointslices",
    "crd",
    "crds",
    "customresourcedefinitions",
    "replicasets",
    "rs",
    "serviceaccounts",
    "sa",
    "all",
    "leases",
    "validatingwebhookconfigurations",
    "clusterroles",
    "clusterrolebindings",
    "roles",
    "rolebindings",
}
KUBECTL_VERBS = {
    "get",
    "describe",
    "apply",
    "create",
    "delete",
    "edit",
    "logs",
    "rollout",
    "label",
    "annotate",
    "patch",
    "wait",
    "port-forward",
    "exec",
    "explain",
    "scale",
    "cordon",
    "drain",
    "config",
    "version",
    "auth",
    "api-resources",
    "top",
}
HELM_VERBS = {
    "install",
    "upgrade",
    "uninstall",
    "template",
    "lint",
    "list",
    "status",
    "rollback",
    "show",
    "dependency",
    "repo",
    "get",
    "history",
    "test",
}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: tuple[str, ...]
    skip: str | None
    execute: bool = False  # a python block marked <!-- docs-test: exec -->

    def where(self, offset: int = 0) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line + 1 + offset}"


def blocks(doc: Path) -> Iterator[Block]:
    """Fenced code blocks of a Markdown file, with the skip marker that precedes any of them."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang, start = m.group(1), m.group(2), m.group(3).lower(), i
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP_MARK.search(prev)
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[:3]):
            # blocks inside list items are indented like their fence
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        yield Block(
            doc, start + 1, lang, tuple(body), skip.group(1) if skip else None, bool(EXEC_MARK.search(prev))
        )
        i += 1


def command_lines(block: Block) -> Iterator[tuple[int, str]]:
    """``(offset, command)`` for each command line of a synopsis block (continuations joined)."""
    pending, first = "", 0
    for offset, raw in enumerate(block.lines):
        text = raw.strip()
        if not pending:
            first = offset
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text, pending = pending + text, ""
        if text.startswith("$ "):
            text = text[2:]
        text = _strip_comment(text)
        if text.startswith(PREFIXES):
            yield first, text


def _strip_comment(text: str) -> str:
    """Drop a trailing `` # comment`` that is not inside quotes."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return shlex.join(list(lexer)) if "#" in text else text
    except ValueError:
        return text.split(" #", 1)[0].rstrip()


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


# --------------------------------------------------------------------------------------------
# static checks
# --------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_cmcpctl(tokens: list[str]) -> str | None:
    parser = build_parser()
    path = ["cmcpctl"]
    rest = tokens[1:]
    while rest and not rest[0].startswith("-"):
        subs = _subparsers(parser)
        if not subs:
            break
        if rest[0] not in subs:
            return f"`{' '.join(path)}` has no sub-command {rest[0]!r} (has: {', '.join(sorted(subs))})"
        parser = subs[rest[0]]
        path.append(rest.pop(0))
    if _subparsers(parser):
        return f"`{' '.join(path)}` needs a sub-command"
    options = {opt for action in parser._actions for opt in action.option_strings}
    for tok in rest:
        flag = tok.strip("[]").split("=", 1)[0]
        if flag.startswith("--") and flag not in options:
            return f"`{' '.join(path)}` has no option {flag} (has: {', '.join(sorted(options))})"
    return None


@cache
def _make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def check_make(tokens: list[str]) -> str | None:
    targets = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t]
    missing = [t for t in targets if t not in _make_targets()]
    return f"Makefile has no target {missing}" if missing else None


def check_python_m(tokens: list[str]) -> str | None:
    module = tokens[2] if len(tokens) > 2 else ""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"module {module!r} not importable"


@cache
def _crd_names() -> frozenset[str]:
    names: set[str] = set()
    for path in (REPO / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            spec_names = ((doc or {}).get("spec") or {}).get("names") or {}
            names.update(str(v).lower() for k, v in spec_names.items() if k in ("plural", "singular", "kind"))
            names.update(str(s).lower() for s in spec_names.get("shortNames") or [])
            group = ((doc or {}).get("spec") or {}).get("group")
            if group and spec_names.get("plural"):
                names.add(f"{spec_names['plural']}.{group}")
    return frozenset(names)


def _cached_tool(name: str) -> Path | None:
    root = Path(os.environ.get("CMCP_E2E_CACHE", Path.home() / ".cache" / "cmcp-e2e"))
    found = sorted(root.glob(f"kubectl-helm-*/{name}"))
    return found[-1] if found and os.access(found[-1], os.X_OK) else None


@cache
def _help(tool: str, verb: str) -> str | None:
    """``<tool> <verb> --help`` from the cached binary (None when it is not cached)."""
    binary = _cached_tool(tool)
    if binary is None:
        return None
    proc = subprocess.run([str(binary), verb, "--help"], capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr if proc.returncode == 0 else ""


def _check_flags(tool: str, verb: str, tokens: list[str]) -> str | None:
    text = _help(tool, verb)
    if text is None:  # binaries not cached: the verb list is all we can check
        return None
    if not text:
        return f"`{tool} {verb} --help` failed: no such command"
    global_help = _help(tool, "options") if tool == "kubectl" else ""
    for tok in tokens:
        flag = tok.split("=", 1)[0]
        if flag.startswith("--") and flag not in text and flag not in (global_help or ""):
            return f"`{tool} {verb}` has no flag {flag}"
    return None


def check_kubectl(tokens: list[str]) -> str | None:
    verb = tokens[1] if len(tokens) > 1 else ""
    if verb not in KUBECTL_VERBS:
        return f"unknown kubectl verb {verb!r}"
    args = tokens[2:]
    if verb in ("get", "describe", "delete", "edit", "wait") and args and not args[0].startswith("-"):
        for kind in args[0].split("/")[0].split(","):
            if kind.lower() not in BUILTIN_RESOURCES | _crd_names():
                return f"kubectl resource type {kind!r} is neither built in nor defined in crds/"
    for i, tok in enumerate(args):
        if tok in ("-f", "--filename") and i + 1 < len(args):
            target = args[i + 1]
            if not target.startswith(("http", "-")) and not (REPO / target).exists():
                return f"kubectl -f {target}: no such file in the repository"
    return _check_flags("kubectl", verb, args)


def check_helm(tokens: list[str]) -> str | None:
    verb = tokens[1] if len(tokens) > 1 else ""
    if verb not in HELM_VERBS:
        return f"unknown helm verb {verb!r}"
    positional = [t for t in tokens[2:] if not t.startswith("-") and t not in ("...", "…")]
    if verb in ("install", "upgrade", "template") and len(positional) >= 2:
        chart = positional[1]
        if chart.startswith(("charts/", "./")) and not (REPO / chart).is_dir():
            return f"helm chart {chart} does not exist"
    return _check_flags("helm", verb, tokens[2:])


@cache
def _script_help(script: str) -> str:
    binary = Path(sys.executable).with_name(script)
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def check_script(tokens: list[str]) -> str | None:
    """A component's own command line (``cmcp-enclave ...``): every ``--flag`` is in its --help."""
    text = _script_help(tokens[0])
    if not text:
        return f"`{tokens[0]} --help` failed"
    for tok in tokens[1:]:
        flag = tok.strip("[]").split("=", 1)[0]
        if flag.startswith("--") and not re.search(re.escape(flag) + r"(?![\w-])", text):
            return f"`{tokens[0]}` has no option {flag}"
    return None


def check_static(command: str) -> str | None:
    tokens = _split(command)
    if tokens and tokens[0] in SCRIPTS:
        return check_script(tokens)
    if command.startswith("cmcpctl"):
        return check_cmcpctl(tokens)
    if command.startswith("make"):
        return check_make(tokens)
    if command.startswith("python -m"):
        return check_python_m(tokens)
    if command.startswith("kubectl"):
        return check_kubectl(tokens)
    if command.startswith("helm"):
        return check_helm(tokens)
    return None


# --------------------------------------------------------------------------------------------
# console blocks: executed
# --------------------------------------------------------------------------------------------


@dataclass
class Example:
    offset: int
    command: str
    expect_exit: int
    expected_output: list[str]


def console_examples(block: Block) -> list[Example]:
    out: list[Example] = []
    for offset, raw in enumerate(block.lines):
        if raw.startswith("$ "):
            command = raw[2:].strip()
            m = re.search(r"\s+#\s*exit\s+(\d+)\s*$", command)
            code = int(m.group(1)) if m else 0
            if m:
                command = command[: m.start()]
            out.append(Example(offset, command, code, []))
        elif out and raw.strip():
            out[-1].expected_output.append(raw.strip())
    return out


def output_matches(expected: str, actual: str) -> bool:
    """Whitespace-insensitive; ``…`` (or ``...``) stands for anything, fragments in order."""
    flat = " ".join(actual.split())
    pos = 0
    for fragment in re.split(r"…|\.\.\.", " ".join(expected.split())):
        fragment = fragment.strip()
        if not fragment:
            continue
        found = flat.find(fragment, pos)
        if found < 0:
            return False
        pos = found + len(fragment)
    return True


def _all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc)]


def _block_id(block: Block) -> str:
    return f"{block.doc.relative_to(REPO)}:{block.line}"


CONSOLE_BLOCKS = [b for b in _all_blocks() if b.lang == "console" and not b.skip]
EXEC_BLOCKS = [b for b in _all_blocks() if b.execute and not b.skip]
SYNOPSIS_BLOCKS = [b for b in _all_blocks() if b.lang != "console" and not b.skip]


@pytest.mark.parametrize("block", SYNOPSIS_BLOCKS, ids=_block_id)
def test_synopsis_commands_are_valid(block: Block) -> None:
    problems = [
        f"{block.where(offset)}: {command}\n    -> {problem}"
        for offset, command in command_lines(block)
        if (problem := check_static(command))
    ]
    assert not problems, "commands shown in the docs do not match the code:\n" + "\n".join(problems)


CONSOLE_DOCS = sorted({b.doc for b in CONSOLE_BLOCKS})


@pytest.mark.parametrize("doc", CONSOLE_DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_console_examples_run(doc: Path, tmp_path: Path) -> None:
    """All console blocks of one document run in order in one scratch directory."""
    env = _sandbox(tmp_path)
    for block in (b for b in CONSOLE_BLOCKS if b.doc == doc):
        examples = console_examples(block)
        assert examples, f"{block.where()}: a console block without any `$ ` command"
        for ex in examples:
            _run_example(block, ex, tmp_path, env)


def _run_example(block: Block, ex: Example, cwd: Path, env: dict[str, str]) -> None:
    problem = check_static(ex.command) if ex.command.startswith(PREFIXES) else None
    assert problem is None, f"{block.where(ex.offset)}: {ex.command}\n    -> {problem}"
    proc = subprocess.run(
        ["bash", "-c", ex.command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    printed = proc.stdout + proc.stderr
    assert proc.returncode == ex.expect_exit, (
        f"{block.where(ex.offset)}: `{ex.command}` exited {proc.returncode}, the docs say "
        f"{ex.expect_exit}:\n{printed[-3000:]}"
    )
    for line in ex.expected_output:
        assert output_matches(line, printed), (
            f"{block.where(ex.offset)}: `{ex.command}` did not print {line!r}; it printed:\n{printed[-3000:]}"
        )


def _sandbox(tmp_path: Path) -> dict[str, str]:
    """A scratch working directory that sees the repository's examples and test data."""
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["NO_COLOR"] = "1"
    return env


@pytest.mark.parametrize("block", EXEC_BLOCKS, ids=_block_id)
def test_python_examples_run(block: Block, tmp_path: Path) -> None:
    assert block.lang == "python", f"{block.where()}: docs-test: exec is for python blocks"
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(block.lines)],
        cwd=tmp_path,
        env=_sandbox(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{block.where()}: the example failed:\n{proc.stderr[-3000:]}"


def test_every_doc_command_is_covered() -> None:
    """Commands outside fenced blocks are not checked; keep them in blocks. Also: something to check."""
    commands = [c for b in _all_blocks() for _, c in command_lines(b)]
    assert any(c.startswith("make demo") for c in commands), "README lost its `make demo` command"
    assert any(c.startswith("make test") for c in commands), "README lost its `make test` command"
    assert CONSOLE_BLOCKS, "no runnable (console) examples in the docs"


# --- the checker checks itself: it must catch the rot it exists for ----------------------------


def test_checker_catches_rot() -> None:
    assert check_static("cmcpctl bundle hash examples/realistic") is None
    assert check_static("cmcpctl bundle hashh examples/realistic") is not None
    assert check_static("cmcpctl verify record r.json --no-such-flag") is not None
    assert check_static("make demo") is None and check_static("make no-such-target") is not None
    assert check_static("python -m cmcp_ctl.main") is None
    assert check_static("python -m cmcp_ctl.nope") is not None
    assert check_static("kubectl get pb,mcpr -n x") is None
    assert check_static("kubectl get widgets") is not None
    assert check_static("kubectl apply -f crds/") is None
    assert check_static("kubectl apply -f crds-gone/") is not None
    assert check_static("helm install cmcp charts/nope") is not None
    assert check_static("cmcp-enclave --bundle DIR --tee simulated") is None
    assert check_static("cmcp-enclave --bundle DIR --no-such-flag") is not None
    assert output_matches("PASS OK … verified", "PASS OK [simulated] record verified")
    assert not output_matches("PASS OK … verified", "FAIL RECORD_INVALID")
