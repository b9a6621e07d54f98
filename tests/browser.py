"""The one way tests start Chromium: Debian's /usr/bin/chromium driven by Playwright (never a
downloaded browser), with the flags this closed network needs; missing Chromium skips on a
laptop and fails in CI (conftest.missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import missing

__all__ = ["CHROMIUM", "launch", "require_chromium"]

CHROMIUM = "/usr/bin/chromium"
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",  # no calls home: the network here is closed
    "--disable-component-update",
]
_SOFTWARE_WEBGL = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]  # no GPU in CI


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        missing("Chromium is not installed at /usr/bin/chromium (apt install chromium)")


def launch(playwright: Any, *, webgl: bool = False) -> Any:
    """A headless Chromium browser (``webgl``: with software WebGL for three.js pages)."""
    require_chromium()
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=_ARGS + (_SOFTWARE_WEBGL if webgl else [])
    )
