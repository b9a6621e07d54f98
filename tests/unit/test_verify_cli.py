"""``factoryops verify``: exit 0 for a valid receipt, 1 naming the broken link, --json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from attestation import Reading, build_receipt
from attestation.microproof import ResetRecord, SourceGap
from factoryops.cli import cli
from tests.hubkit import Device


def _files(
    tmp: Path, source_gaps: tuple[SourceGap, ...] = (), reset: ResetRecord | None = None
) -> tuple[Path, Path]:
    dev = Device()
    cose, _, rs = dev.window(4, source_gaps=source_gaps, reset=reset)
    receipt = tmp / "r.json"
    receipt.write_text(build_receipt(rs, 2, cose).dumps())
    key = tmp / "device.pem"
    pub = serialization.load_der_public_key(dev.signer.public_key_der())
    key.write_bytes(
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return receipt, key


def test_a_valid_receipt_exits_0(tmp_path: Path) -> None:
    receipt, key = _files(tmp_path)
    result = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("VALID")


def test_an_altered_reading_exits_1_and_json_names_the_link(tmp_path: Path) -> None:
    receipt, key = _files(tmp_path)
    doc = json.loads(receipt.read_text())
    doc["reading"]["value"] = doc["reading"]["value"] + 1000
    receipt.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key), "--json"])
    assert result.exit_code == 1
    verdict = json.loads(result.output)
    assert verdict["valid"] is False
    assert verdict["link"] == "reading"


def test_an_unknown_key_and_a_broken_file_exit_1(tmp_path: Path) -> None:
    receipt, _ = _files(tmp_path)
    result = CliRunner().invoke(cli, ["verify", str(receipt), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["link"] == "key"
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    result = CliRunner().invoke(cli, ["verify", str(junk)])
    assert result.exit_code != 0


def test_readings_round_trip_through_the_receipt_json(tmp_path: Path) -> None:
    receipt, _ = _files(tmp_path)
    r = json.loads(receipt.read_text())["reading"]
    assert Reading(**r).seq == 2


def test_the_plain_output_names_the_quality_and_the_silent_sources(tmp_path: Path) -> None:
    silent = SourceGap("plc-2", 1_700_000_000_000_000_000, 1_700_000_001_500_000_000, "timeout")
    receipt, key = _files(tmp_path, (silent,))
    result = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key)])
    assert result.exit_code == 0, result.output
    assert "quality 0x00000000 (Good)" in result.output
    assert (
        "silent source in this window: plc-2 2023-11-14T22:13:20.000+00:00"
        " .. 2023-11-14T22:13:21.500+00:00 (timeout)"
    ) in result.output
    as_json = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key), "--json"])
    assert json.loads(as_json.output)["source_gaps"] == [
        {
            "source": "plc-2",
            "first_ts_ns": silent.first_ts_ns,
            "last_ts_ns": silent.last_ts_ns,
            "reason": "timeout",
        }
    ]


def test_verify_prints_a_signed_chain_reset(tmp_path: Path) -> None:
    receipt, key = _files(tmp_path, reset=ResetRecord("spool_lost", 41, 2099))
    result = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key)])
    assert result.exit_code == 0, result.output
    assert (
        "chain reset in this window (spool_lost): continues the hub's window 41 (last seq 2099)"
    ) in result.output
    as_json = CliRunner().invoke(cli, ["verify", str(receipt), "--trust", str(key), "--json"])
    assert json.loads(as_json.output)["reset"] == {
        "reason": "spool_lost",
        "hub_window": 41,
        "hub_last_seq": 2099,
    }


def test_a_value_reads_short_and_keeps_its_exact_signed_form() -> None:
    from factoryops.verify_cmd import _value_text

    assert _value_text(26.580000000000002) == "26.58 (exactly 26.580000000000002)"
    assert _value_text(20.5) == "20.5"
    assert _value_text(float("nan")) == "nan" and _value_text("open") == "'open'"
