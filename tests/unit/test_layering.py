"""The package layering of ADR 0001, checked on the import statements themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {
    *("attestation", "models_onnx", "agent", "cloud_sync", "provisioning", "hil_tests"),
    "capsules",
}
ALLOWED = {
    "attestation": set(),
    "models_onnx": {"attestation"},
    "agent": {"attestation", "models_onnx"},
    "cloud_sync": {"attestation", "models_onnx"},
    "provisioning": {"attestation", "models_onnx"},
    # a rig reboots a node over the raw REPL with provisioning's client (ADR 0001, later)
    "hil_tests": {"attestation", "models_onnx", "provisioning"},
    # a capsule bundles an agent config fragment, a simulator and a recipe: it checks each
    # with its owner's parser (ADR 0001, 2026-12-05)
    "capsules": {"attestation", "models_onnx", "agent", "hil_tests", "cloud_sync"},
}


def _imports(package: str) -> set[tuple[str, str]]:
    """(file, imported top-level package of ours) for every import in ``package``."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".", 1)[0]
                if top in OURS | {"factoryops"} and top != package:
                    found.add((str(path.relative_to(ROOT)), top))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_inside_it(package: str) -> None:
    wrong = sorted((f, top) for f, top in _imports(package) if top not in ALLOWED[package])
    assert wrong == [], f"{package} may import only {sorted(ALLOWED[package])}"
