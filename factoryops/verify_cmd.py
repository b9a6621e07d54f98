"""``factoryops verify``: check a per-reading receipt (or a bundle of them) offline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from attestation import MalformedInput, load_anchors, receipt_from_json, report_receipt
from attestation.verify import Verdict, verify_chain

__all__ = ["verify"]


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise click.FileError(str(path), hint=str(err)) from err
    if len(text) > 64 << 20:
        raise MalformedInput(str(path), "larger than 64 MiB")
    try:
        return json.loads(text)
    except ValueError as err:
        raise MalformedInput(str(path), f"not JSON: {err}") from err


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM to pin: a fleet CA certificate, a device public key or a hub key (repeatable).",
)
@click.option("--require-tpm", is_flag=True, help="Refuse receipts signed by a software key.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable verdict.")
@click.option(
    "--remember",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Checkpoint memory file: keep the newest hub checkpoint seen and report a forked"
    " or rewritten log (needs a pinned hub key).",
)
@click.option(
    "--hub",
    "hub_url",
    default=None,
    help="Hub URL to fetch consistency proofs from (without it, a newer tree is only noted).",
)
def verify(
    file: Path,
    trust: tuple[Path, ...],
    require_tpm: bool,
    as_json: bool,
    remember: Path | None,
    hub_url: str | None,
) -> None:
    """Check a reading's receipt offline; exit 0 when valid, 1 naming the broken link.

    FILE is a receipt JSON, or a bundle {"receipts": [...], "microproofs": [...]}
    whose micro-proofs are also checked as one prev-hash chain.

    \b
    Examples:
      factoryops verify receipt.json --trust fleet-ca.pem
      factoryops verify receipt.json --trust device-key.pem --json
      factoryops verify receipt.json --trust fleet-ca.pem --trust hub-log-key.pem \\
          --remember ~/.factoryops/checkpoints.json --hub https://hub.example
    """
    anchors = load_anchors(list(trust), allow_software_keys=not require_tpm)
    doc = _load(file)
    verdicts: list[Verdict] = []
    chain_error: dict[str, str] | None = None
    if isinstance(doc, dict) and "receipts" in doc:
        receipts = doc["receipts"]
        if not isinstance(receipts, list):
            raise MalformedInput("receipts", "expected a list")
        verdicts = [report_receipt(receipt_from_json(r), anchors) for r in receipts]
        chain_error = _check_bundle_chain(doc.get("microproofs"))
    else:
        verdicts = [report_receipt(receipt_from_json(doc), anchors)]
    if remember is not None:
        raw = doc["receipts"] if isinstance(doc, dict) and "receipts" in doc else [doc]
        verdicts = [
            _witness(v, receipt_from_json(r).checkpoint, anchors.hub_keys, remember, hub_url)
            for v, r in zip(verdicts, raw, strict=True)
        ]
    ok = all(v.valid for v in verdicts) and chain_error is None
    if as_json:
        out: dict[str, Any] = {"valid": ok, "receipts": [v.as_json() for v in verdicts]}
        if chain_error:
            out["chain"] = chain_error
        click.echo(json.dumps(out if len(verdicts) != 1 or chain_error else verdicts[0].as_json()))
    else:
        for v in verdicts:
            _print_verdict(v)
        if chain_error:
            click.secho(f"INVALID chain: {chain_error['error']}", fg="red")
    sys.exit(0 if ok else 1)


def _check_bundle_chain(microproofs: Any) -> dict[str, str] | None:
    import base64  # noqa: PLC0415 - only bundles need it

    from attestation import BrokenLink  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if microproofs is None:
        return None
    if not isinstance(microproofs, list) or not all(isinstance(m, str) for m in microproofs):
        raise MalformedInput("microproofs", "expected a list of base64 strings")
    try:
        verify_chain([base64.b64decode(m, validate=True) for m in microproofs])
    except BrokenLink as err:
        return {"link": err.link, "error": str(err)}
    return None


def _witness(
    v: Verdict,
    note: str | None,
    hub_keys: tuple[Any, ...],
    memory_path: Path,
    hub_url: str | None,
) -> Verdict:
    """Judge the receipt's checkpoint against the remembered one (a fork makes it invalid)."""
    import httpx  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.signednote import NoteVerifier  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from attestation.witness import CheckpointMemory  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if not v.valid or note is None or not hub_keys:
        return v
    origin = note.split("\n", 1)[0]
    memory = CheckpointMemory(memory_path, [NoteVerifier.for_key(origin, k) for k in hub_keys])

    def proofs(size1: int, size2: int) -> list[bytes] | None:
        if hub_url is None:
            return None
        import base64  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        r = httpx.get(
            f"{hub_url.rstrip('/')}/v1/log/proof/consistency",
            params={"from": size1, "to": size2},
            timeout=10,
        )
        r.raise_for_status()
        return [base64.b64decode(h) for h in r.json()["proof"]]

    judgement = memory.observe(note, proofs)
    if judgement.ok:
        return dataclasses.replace(v, notes=(*v.notes, f"checkpoint: {judgement.detail}"))
    return dataclasses.replace(
        v,
        valid=False,
        link="consistency",
        error=f"{judgement.detail}; evidence kept in {memory_path}",
        hint="do not trust this hub's log; report both checkpoints to its operator",
    )


def quality_text(quality: object) -> str:
    """An OPC UA StatusCode as ``0x80050000 (Bad)``: the severity is its top two bits."""
    if not isinstance(quality, int) or isinstance(quality, bool):
        return str(quality)
    severity = ("Good", "Uncertain", "Bad", "Bad")[(quality >> 30) & 3]
    return f"0x{quality:08X} ({severity})"


def _utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def _value_text(value: Any) -> str:
    """A reading's value for people: 26.58, and the exact signed float beside it when the
    short form is not the whole story (26.58, exactly 26.580000000000002)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return repr(value)
    short = f"{value:.6g}"
    return short if float(short) == value else f"{short} (exactly {value!r})"


def _print_verdict(v: Verdict) -> None:
    r = v.reading or {}
    what = (
        f"{r.get('signal')} seq {r.get('seq')} = {_value_text(r.get('value'))} {r.get('unit')}"
        f", quality {quality_text(r.get('quality'))}"
    )
    if v.valid:
        kind = f" ({v.key_kind} key)" if v.key_kind else ""
        click.secho(f"VALID  {what}", fg="green")
        click.echo(f"  signed by {v.utid}{kind}; checked: {', '.join(v.checked)}")
        for g in v.source_gaps:  # signed in the same window: what else was silent
            click.echo(
                f"  silent source in this window: {g.source} {_utc(g.first_ts_ns)}"
                f" .. {_utc(g.last_ts_ns)} ({g.reason})"
            )
        if (rs := v.reset) is not None:  # signed: the spool was lost or forked (ADR 0027)
            click.echo(
                f"  chain reset in this window ({rs.reason}): continues the hub's window"
                f" {rs.hub_window} (last seq {rs.hub_last_seq}); readings the old spool held"
                " after it are lost"
            )
    else:
        click.secho(f"INVALID  {what}", fg="red")
        click.echo(f"  broken link: {v.error}")
        if v.hint:
            click.echo(f"  hint: {v.hint}")
    for note in v.notes:
        click.echo(f"  note: {note}")
