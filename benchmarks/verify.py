"""``factoryops bench verify``: offline verification speed.

Two figures: readings/s of root recomputation (an auditor re-hashing stored windows of 1,000
readings against their signed roots: leaf encoding is not included, the leaves are the
stored CBOR), both with hashlib and through ``attestation.leafbatch.window_root`` (which also
checks every leaf's deterministic form and seq; in C when the extension is built), and
receipts/s of the full per-reading receipt check (parse, certificate, signature, inclusion,
root). ``verify_readings_per_s`` is the faster of the two root paths. The baseline, measured
in the same run, is raw SHA-256 over the same bytes with no tree (hashlib, one call a leaf):
the ratios say what the Merkle structure and Python cost on top.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

from agent.sealer import seal
from agent.window import ClosedWindow
from attestation import merkle
from attestation.leafbatch import (
    NATIVE,
    sha_backend,
    sha_backends,
    using_sha_backend,
    window_root,
)
from attestation.microproof import GENESIS_PREV
from attestation.reading import Reading, decode_leaf, encode_leaf, leaf_hash
from attestation.receipt import build_receipt
from attestation.signers.software import SoftwareSigner
from attestation.verify import TrustAnchors, report_receipt

__all__ = ["command"]


def _windows(n_windows: int, per_window: int) -> list[list[bytes]]:
    return [
        [
            encode_leaf(
                Reading(w * per_window + i, 1_700_000_000_000_000_000 + i, "flow", i * 0.5, "m3/h")
            )
            for i in range(per_window)
        ]
        for w in range(n_windows)
    ]


def _best_of(rounds: int, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


@click.command()
@click.option("--windows", default=200, show_default=True, help="Windows of readings to re-hash.")
@click.option("--per-window", default=1000, show_default=True, help="Readings per window.")
@click.option("--receipts", default=300, show_default=True, help="Receipts to verify in full.")
@click.option("--rounds", default=5, show_default=True, help="Best of this many rounds.")
def command(windows: int, per_window: int, receipts: int, rounds: int) -> None:
    """Root recomputation readings/s and full receipt checks/s, against raw SHA-256.

    \b
    Example:
      factoryops bench verify --windows 500 --rounds 7
    """
    data = _windows(windows, per_window)
    roots = [merkle.root([leaf_hash(x) for x in w]) for w in data]
    total = windows * per_window

    def recompute() -> None:
        for w, want in zip(data, roots, strict=True):
            if merkle.root([leaf_hash(x) for x in w]) != want:
                raise AssertionError("root mismatch")

    def raw_sha() -> None:
        for w in data:
            for x in w:
                hashlib.sha256(x).digest()

    def recompute_checked() -> None:  # every leaf strictly checked too; in C when built
        for w, want, first in zip(data, roots, range(0, total, per_window), strict=True):
            if window_root(w, first) != want:
                raise AssertionError("root mismatch")

    t_tree = _best_of(rounds, recompute)
    t_checked = _best_of(rounds, recompute_checked)
    t_other: dict[str, float] = {}  # the same C check with the CPU's other SHA-256 backends
    for name in sha_backends()[1:]:  # ADR 0011; "openssl" (one node at a time) is the baseline
        with using_sha_backend(name):
            t_other[name] = _best_of(rounds, recompute_checked)
    t_raw = _best_of(rounds, raw_sha)

    # full receipts: a real signed micro-proof, one receipt per reading checked
    signer = SoftwareSigner.generate()
    key = serialization.load_der_public_key(signer.public_key_der())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    anchors = TrustAnchors(device_keys=(key,))
    readings = [decode_leaf(x) for x in data[0]]
    sealed = seal(ClosedWindow(tuple(readings)), index=0, prev=GENESIS_PREV, signer=signer, iat=1)
    built = [build_receipt(readings, i % per_window, sealed.cose) for i in range(receipts)]

    def check_receipts() -> None:
        for rc in built:
            if not report_receipt(rc, anchors).valid:
                raise AssertionError("receipt invalid")

    t_receipts = _best_of(rounds, check_receipts)
    figures = {
        "verify_readings_per_s": round(total / min(t_tree, t_checked)),
        "python_root_readings_per_s": round(total / t_tree),
        "checked_root_readings_per_s": round(total / t_checked),
        "checked_root_native": NATIVE,
        "checked_root_sha": sha_backend(),
        **{
            f"checked_root_{name.replace('-', '_')}_readings_per_s": round(total / t)
            for name, t in t_other.items()
        },
        "baseline_sha256_leaves_per_s": round(total / t_raw),
        "ratio_vs_raw_sha256": round(t_raw / t_tree, 3),
        "ratio_checked_vs_raw_sha256": round(t_raw / t_checked, 3),
        "receipts_per_s": round(receipts / t_receipts),
        "readings_per_window": per_window,
    }
    table = Table(title=f"Offline verification (best of {rounds} rounds)")
    table.add_column("what")
    table.add_column("rate", justify="right")
    table.add_row("root recomputation (hashlib), readings/s", f"{total / t_tree:,.0f}")
    table.add_row(
        "leaves checked + root (attestation.leafbatch, "
        + (f"C, SHA-256 by {sha_backend()}" if NATIVE else "pure Python")
        + "), readings/s",
        f"{total / t_checked:,.0f}",
    )
    for name, t in t_other.items():
        table.add_row(f"  the same, SHA-256 by {name}, readings/s", f"{total / t:,.0f}")
    table.add_row(
        "baseline: raw SHA-256 of the leaves/s", f"{figures['baseline_sha256_leaves_per_s']:,}"
    )
    table.add_row("ratio (tree / raw)", f"{figures['ratio_vs_raw_sha256']}")
    table.add_row("full receipt checks/s", f"{figures['receipts_per_s']:,}")
    Console().print(table)
    click.echo(json.dumps(figures))
