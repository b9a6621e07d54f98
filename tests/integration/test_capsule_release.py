"""Capsules released through the hub's TUF repository: a site fetches, checks and applies one
over HTTP from a running hub; a changed byte on the hub is refused by TUF."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from attestation.signers.software import Ed25519FileSigner
from capsules.catalogue import find
from capsules.errors import BundleInvalid, CapsuleError
from capsules.release import fetch_capsule
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.updates.repository import init_repository
from factoryops.cli import cli


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[HubServer, Path]]:
    data = tmp_path / "hub-data"
    init_repository(data / "tuf", tmp_path / "offline-root-keys", data / "tuf-keys")
    Ed25519FileSigner.load_or_create(data / "hub-log.key")  # the hub's log key, as it makes it
    r = CliRunner().invoke(cli, ["capsule", "publish", "quality-ndt", "--tuf", str(data)])
    assert r.exit_code == 0, r.output
    server = HubServer(HubSettings.create(data)).start()
    yield server, data
    server.stop()


def _site(tmp_path: Path, data: Path) -> Path:
    meta = tmp_path / "site" / "tuf"
    meta.mkdir(parents=True)
    shutil.copy(data / "tuf" / "metadata" / "1.root.json", meta / "root.json")
    return meta


def test_a_site_fetches_a_release_and_applies_it(
    hub: tuple[HubServer, Path], tmp_path: Path
) -> None:
    server, data = hub
    meta = _site(tmp_path, data)
    out = tmp_path / "site" / "capsules"
    runner = CliRunner()
    r = runner.invoke(
        cli,
        ["capsule", "fetch", "quality-ndt", "--hub", server.url, "--metadata", str(meta),
         "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    fetched = out / "quality-ndt" / "capsule.toml"
    assert fetched.read_bytes() == Path(find("quality-ndt").source).read_bytes()
    r = runner.invoke(
        cli, ["capsule", "apply", str(out / "quality-ndt"), "--out", str(tmp_path / "cfg")]
    )
    assert r.exit_code == 0, r.output


def test_a_changed_byte_on_the_hub_is_refused_by_tuf(
    hub: tuple[HubServer, Path], tmp_path: Path
) -> None:
    server, data = hub
    (target,) = (data / "tuf" / "targets" / "capsules" / "quality-ndt").glob("*.1.0.0.capsule.json")
    target.write_bytes(target.read_bytes().replace(b"quality-ndt", b"quality-nDt", 1))
    with pytest.raises(BundleInvalid, match="TUF refused"):
        fetch_capsule(server.url, _site(tmp_path, data), "quality-ndt", tmp_path / "work")


def test_a_release_is_immutable(hub: tuple[HubServer, Path]) -> None:
    _, data = hub
    r = CliRunner().invoke(cli, ["capsule", "publish", "quality-ndt", "--tuf", str(data)])
    assert r.exit_code == 1
    assert isinstance(r.exception, CapsuleError) and "already published" in str(r.exception)


def test_an_unpublished_capsule_is_named(hub: tuple[HubServer, Path], tmp_path: Path) -> None:
    server, data = hub
    with pytest.raises(CapsuleError, match="no capsule 'forming'"):
        fetch_capsule(server.url, _site(tmp_path, data), "forming", tmp_path / "work")
