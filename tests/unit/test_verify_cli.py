"""``factoryops verify``: exit 0 for a valid receipt, 1 naming the broken link, --json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from attestation import Reading, build_receipt
from factoryops.cli import cli
from tests.hubkit import Device


def _files(tmp: Path) -> tuple[Path, Path]:
    dev = Device()
    cose, _, rs = dev.window(4)
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
