"""A private SoftHSM2 for the tests of this process: one token directory (SOFTHSM2_CONF points
at a temporary config), tokens made on demand by label.

PKCS#11 libraries read their configuration and list their tokens once per process, at
C_Initialize: every test module shares this one directory, and every token is made before
the first is used (``TOKENS``), or a later one would not be found. Skips locally (fails
in CI, ``missing``) when SoftHSM2 or python-pkcs11 is absent.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import missing, require_module

__all__ = ["MODULE", "PIN", "softhsm_token"]

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN, SO_PIN = "1234", "5678"
TOKENS = ("hub", "tuf-root", "tuf-online")


@functools.cache
def _conf() -> Path:
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        missing("SoftHSM2 is not installed (apt install softhsm2)")
    require_module("pkcs11", "python-pkcs11 is not installed (uv sync --extra hsm)")
    root = Path(tempfile.mkdtemp(prefix="softhsm-"))
    atexit.register(shutil.rmtree, root, True)
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in TOKENS:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN,
             "--so-pin", SO_PIN],
            check=True, capture_output=True,
        )  # fmt: skip
    return conf


def softhsm_token(label: str) -> str:
    """Token ``label`` (one of ``TOKENS``, PIN ``PIN``); its URI without an object."""
    assert label in TOKENS, f"add {label!r} to TOKENS"
    _conf()
    return f"pkcs11:module-path={MODULE};token={label};pin-value={PIN}"
