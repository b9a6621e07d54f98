"""``factoryops bench sign``: ES256 signatures/s, software key vs a key in swtpm.

swtpm is a SIMULATED TPM: a real TPM signs in ~200 ms, which is why the agent signs once per
window and lets windows grow while the TPM is busy.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from attestation.signers.base import Signer
from attestation.signers.software import SoftwareSigner
from provisioning.swtpm import SwtpmProcess, swtpm_available

__all__ = ["command"]


def _rate(signer: Signer, seconds: float) -> tuple[float, int]:
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        signer.sign(n.to_bytes(8, "big"))
        n += 1
    return n / elapsed, n


@click.command()
@click.option(
    "--seconds", type=float, default=3.0, show_default=True, help="How long to sign with each key."
)
def command(seconds: float) -> None:
    """Signatures/s with the software key and with a key in swtpm (simulated TPM).

    \b
    Example:
      factoryops bench sign --seconds 5
    """
    soft_rate, soft_n = _rate(SoftwareSigner.generate(), seconds)
    tpm_rate: float | None = None
    tpm_n = 0
    if swtpm_available():
        from attestation.signers.tpm import TpmSigner  # noqa: PLC0415 - optional extra

        with tempfile.TemporaryDirectory() as d, SwtpmProcess(Path(d)) as tpm:
            signer = TpmSigner.open(tpm.tcti)
            try:
                tpm_rate, tpm_n = _rate(signer, seconds)
            finally:
                signer.close()
    table = Table(title="ES256 signatures (one per window in the agent)")
    for col in ("key", "signatures", "per second", "ms each"):
        table.add_column(col, justify="left" if col == "key" else "right")
    table.add_row("software P-256", f"{soft_n:,}", f"{soft_rate:,.0f}", f"{1000 / soft_rate:.3f}")
    if tpm_rate is not None:
        table.add_row(
            "swtpm (simulated TPM)", f"{tpm_n:,}", f"{tpm_rate:,.0f}", f"{1000 / tpm_rate:.3f}"
        )
    Console().print(table)
    click.echo(
        json.dumps(
            {
                "software_signs_per_s": round(soft_rate),
                "swtpm_signs_per_s": None if tpm_rate is None else round(tpm_rate),
                "ratio_swtpm_to_software": None
                if tpm_rate is None
                else round(tpm_rate / soft_rate, 4),
            }
        )
    )
