"""Shared test fixtures: where ../shared lives, and the skip-or-fail policy for services.

On a laptop a test whose service or data is missing skips and says why; with CI=true
nothing may skip, so the same condition fails the test instead.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from provisioning.swtpm import SwtpmProcess, swtpm_available

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# pytest-xdist's workers ignore SIGINT (execnet does, so a terminal's Ctrl-C goes to the
# controller), and a process inherits an ignored signal through exec: without this, a test
# that presses Ctrl-C on a command it started (`hil run`, `demo`) is ignored by that command.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def or_absent(paths: list[Path]) -> list[Any]:
    """Parameters for a test over files of ../shared: the paths, or when there are none one
    ``None`` case, so the test still asks for its ``shared_dir`` fixture and skips (fails in
    CI) naming the absent folder, not pytest's bare "got empty parameter set"."""
    return list(paths) or [pytest.param(None, id="shared-absent")]


def missing(reason: str) -> None:
    """Skip (laptop) or fail (CI) because something the test needs is absent."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_module(name: str, reason: str) -> None:
    """Skip (laptop) or fail (CI) when an optional Python package is not installed; the one
    rule for every missing dependency (never pytest's import-or-skip helper, which skips in
    CI too)."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        missing(reason)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_port(port: int, service: str) -> None:
    if not port_open(port):
        missing(f"{service} is not listening on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (datasets and conformance vectors), next to the project root."""
    if not SHARED.is_dir():
        missing(f"{SHARED} is absent: conformance vectors and datasets live there")
    return SHARED


@pytest.fixture(scope="session")
def vectors_dir(shared_dir: Path) -> Path:
    return shared_dir / "vectors"


@pytest.fixture(scope="session")
def skab_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "skab"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of the test's own on the local server, dropped after it:
    tests running at once (pytest-xdist workers, helpers' checkouts) never meet in it."""
    require_port(5432, "PostgreSQL")
    server = os.environ.get(
        "FACTORYOPS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    name = f"fo_{secrets.token_hex(6)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def mqtt_port() -> int:
    require_port(1883, "Mosquitto")
    return 1883


@pytest.fixture
def nats_url() -> str:
    require_port(4222, "NATS")
    return "nats://127.0.0.1:4222"


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwtpmProcess]:
    """A SIMULATED TPM 2.0 (one swtpm process per test session)."""
    if not swtpm_available():
        missing("swtpm is not installed (apt install swtpm swtpm-tools)")
    try:
        import tpm2_pytss  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        missing("tpm2-pytss is not installed (needs libtss2-dev; uv sync --extra tpm)")
    proc = SwtpmProcess(Path(tmp_path_factory.mktemp("swtpm"))).start()
    yield proc
    proc.stop()
