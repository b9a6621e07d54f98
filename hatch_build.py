"""Hatch build hook: compile the hub's native window check (attestation/_native/leafcheck.c).

The extension is an accelerator only: when there is no C compiler or no OpenSSL headers,
the build says so and goes on, and ``attestation.leafbatch`` uses its pure-Python path
(same results, ~10x slower). It is compiled next to its package so that editable installs
(``uv sync``) and wheels both find it. Why it exists: docs/adr/0007-native-window-check.md.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("attestation/_native/leafcheck.c")
MODULE = "attestation/_leafcheck"


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]  # hatchling's BuildHookInterface is generic without a public type parameter
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        target = root / (MODULE + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
        source = root / SOURCE
        stale = not target.exists() or target.stat().st_mtime < source.stat().st_mtime
        if stale and not _compile(source, target):
            return
        if self.target_name == "wheel" and version == "standard":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"][str(target)] = str(target.relative_to(root))


def _compile(source: Path, target: Path) -> bool:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    cmd = [
        *cc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        f"-I{sysconfig.get_paths()['include']}",
        str(source),
        "-o",
        str(target),
        "-lcrypto",
        "-lm",
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)  # noqa: S603 - our own compiler command, no user input
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        print(
            f"factoryops: native window check not built ({detail.strip()[:300]});"
            " the hub uses the pure-Python path",
            file=sys.stderr,
        )
        return False
    return True
