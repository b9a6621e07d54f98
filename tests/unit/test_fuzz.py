"""A short coverage-guided run of every fuzz target (fuzz/targets.py) on each `make test`.

Each run starts from a well-formed seed per target and mutates it for a few thousand inputs;
libFuzzer exits non-zero, with the traceback and the input saved, on any exception other
than the parser's own "bad input" error. Longer runs: see fuzz/targets.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_module

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "fuzz" / "targets.py"
TARGETS = [
    "leaf",
    "leafcheck",
    "leafseq",
    "plaincbor",
    "microproof",
    "sign1",
    "upload",
    "receipt",
    "checkpoint",
    "policy",
]
TARGETS += ["config", "mqtt"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("atheris", "atheris (dev dependency) is not installed")
    folder = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(HARNESS), "seed", str(folder)], cwd=ROOT, check=True)
    return folder


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_survives_mutated_inputs(target: str, corpus: Path, tmp_path: Path) -> None:
    seeds = sorted((corpus / target).iterdir())
    assert seeds, f"no seed for {target}"
    run = subprocess.run(
        [sys.executable, str(HARNESS), target, str(corpus / target), "-runs=4000", "-seed=1"],
        check=False,
        cwd=tmp_path,  # a crash-<sha1> file lands here, not in the checkout
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = "\n".join(run.stderr.splitlines()[-30:])
    # atheris prints an uncaught Python exception's traceback on stdout, and libFuzzer then
    # says only "fuzz target exited" on stderr (exit code 77): show both
    python = "\n".join(run.stdout.splitlines()[-40:])
    assert run.returncode == 0, f"{target} found a crash:\n{python}\n{tail}"
    assert "DONE" in run.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail
