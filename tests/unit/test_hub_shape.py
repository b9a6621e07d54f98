"""The hub's HTTP layer keeps its shape: ``create_app`` only wires, routes live in routers by
resource built from one ``HubDeps``, nothing looks services up on ``app.state``, and no
thread starts before the app's lifespan does.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.hubkit import api_routes

HUB = Path(__file__).resolve().parents[2] / "cloud_sync"


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_every_route_is_declared_in_a_router_module_not_in_the_factory(tmp_path: Path) -> None:
    app = create_app(HubSettings.create(tmp_path / "hub", allow_software_keys=True))
    homes = {route.path: route.endpoint.__module__ for route in api_routes(app.routes)}
    assert homes, "the app has no routes"
    misplaced = {
        path: module
        for path, module in homes.items()
        if module == "cloud_sync.app" or not module.startswith("cloud_sync.")
    }
    assert misplaced == {}


def test_the_factory_is_wiring_only() -> None:
    """No route, handler or helper is defined inside the factory, and it stays short."""
    tree = ast.parse((HUB / "app.py").read_text())
    factories = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name in ("create_app", "hub_app")
    ]
    assert factories, "app.py has no create_app"
    for factory in factories:
        inner = [
            n.name
            for n in ast.walk(factory)
            if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef) and n is not factory
        ]
        assert inner == [], f"functions defined inside {factory.name}: {inner}"
        assert factory.end_lineno is not None
        assert factory.end_lineno - factory.lineno < 60, f"{factory.name} is not wiring only"


def test_no_hub_module_looks_services_up_on_app_state() -> None:
    users = [
        str(path.relative_to(HUB)) for path in HUB.rglob("*.py") if "app.state" in path.read_text()
    ]
    assert users == []


def test_the_webhook_thread_starts_with_the_lifespan_and_ends_with_it(tmp_path: Path) -> None:
    settings = HubSettings.create(
        tmp_path / "hub", webhook_url="http://127.0.0.1:9/hook", allow_software_keys=True
    )
    before = len(_threads("webhooks"))
    app = create_app(settings)
    assert len(_threads("webhooks")) == before, "create_app started a thread"
    with TestClient(app):
        assert len(_threads("webhooks")) == before + 1
    assert len(_threads("webhooks")) == before


# What a hub module outside storage/ may take from SQLAlchemy: the engine as an opaque handle
# it passes to a repository, and URL parsing. Statements, connections and driver errors are
# storage's (issue 16 item 6: all SQL behind storage/).
_HANDLES = {"Engine", "make_url"}
# jobs/store.py is the jobs package's own repository (issue 20): its compare-and-set writes
# follow jobs/lifecycle.py, and storage importing jobs would make an import cycle with
# jobs/__init__ (ADR 0001 keeps storage a leaf).
_OWN_REPOSITORIES = {"jobs/store.py"}


def _sqlalchemy_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("sqlalchemy")}
    return names


def test_sql_lives_behind_storage() -> None:
    outside = {
        str(path.relative_to(HUB)): used - _HANDLES
        for path in HUB.rglob("*.py")
        if "storage" not in path.relative_to(HUB).parts
        and str(path.relative_to(HUB)) not in _OWN_REPOSITORIES
        and (used := _sqlalchemy_names(path))
    }
    assert {module: names for module, names in outside.items() if names} == {}


def test_the_ingest_rules_are_pure() -> None:
    """Issue 16 item 6: canonical form, signature, enrollment, chain, sequence and gap rules
    in one module with no database, clock, lock or I/O (python-tuf's TrustedMetadataSet
    shape); the shell writes the log in its own transaction, with no callback into the app."""
    tree = ast.parse((HUB / "chain.py").read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    allowed = ("__future__", "dataclasses", "typing", "attestation", "cloud_sync.errors")
    assert sorted(m for m in imported if not m.startswith(allowed)) == []
    users = [p.name for p in HUB.rglob("*.py") if "on_accepted" in p.read_text(encoding="utf-8")]
    assert users == []
