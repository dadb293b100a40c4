"""Fixtures several unit-test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.postgres import PostgresServer, postgres
from tests.helpers.gateway_stack import AUDIENCE
from tests.paths import ROOT


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """A real ``cmcp-enclave`` process on ``examples/realistic`` minting permits for ``AUDIENCE``.

    Several gateway and guard test modules need exactly this enclave; module scope keeps one
    process per module (not per test) while no module sees another's sessions or spent permits.
    A module that needs a different enclave defines its own fixture of this name."""
    bundle = ROOT / "examples/realistic"
    with start_enclave(bundle, tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as proc:
        yield proc


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the whole run (Debian's server, private, on loopback).

    Tests that share it keep to their own tables or rows; one that must stop a server starts its own."""
    with postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server
