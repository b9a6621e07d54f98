"""TUF keys in PKCS#11 tokens (SoftHSM2 in a private token directory): the root keys on one
token, the online keys on another; python-tuf signs every role through the token, an agent
verifies and installs what the hub publishes, and a root held in the token is rotated."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.updates import ModelUpdates, install_trusted_root
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.updates import TufRepository, UpdatesError, init_repository, publish_model
from cloud_sync.updates.keys import load_key, new_key_file
from factoryops.cli import cli
from hil_tests.training import simulated_normal
from models_onnx.manifest import load_model
from models_onnx.recipes import build_pca
from tests.integration.test_updates_tuf import FAMILY, _live
from tests.softhsm import softhsm_token


def _publish(repo: TufRepository, models: Path, model_id: str) -> int:
    signals, x = simulated_normal(60, seed=3)
    _, manifest = build_pca(x, signals, models, model_id=model_id)
    return publish_model(repo, manifest, family=FAMILY, site="fleet", job_id=None).version


def test_metadata_signed_in_the_token_installs_and_a_token_root_rotates(tmp_path: Path) -> None:
    root_token, online_token = softhsm_token("tuf-root"), softhsm_token("tuf-online")
    settings = HubSettings.create(tmp_path / "hub")
    repo_dir, keys = settings.data_dir / "tuf", settings.data_dir / "tuf-keys"
    root = init_repository(repo_dir, None, keys, root_hsm=root_token, online_hsm=online_token)
    assert sorted(p.name for p in keys.iterdir()) == [
        "snapshot.uri",
        "targets.uri",
        "timestamp.uri",
    ]
    assert "object=tuf-targets" in (keys / "targets.uri").read_text()
    assert (keys / "targets.uri").stat().st_mode & 0o777 == 0o600

    repo = TufRepository.open(repo_dir, keys)  # the online keys found again in the token
    signals, x = simulated_normal(60, seed=3)
    _, first = build_pca(x, signals, tmp_path / "gateway", model_id="factory")
    assert _publish(repo, tmp_path / "models", "v1") == 1

    # rotation: two of the three token root keys sign root 2, whose keys are files
    old = [load_key(f"{root_token};object=tuf-root-{i}") for i in (1, 3)]
    new = [new_key_file(tmp_path / "new" / f"root-{i}.pem") for i in (1, 2, 3)]
    assert repo.rotate_root(old, new) == 2
    assert _publish(repo, tmp_path / "models", "v2") == 2
    with HubServer(settings) as hub:  # serves /tuf, re-signing the timestamp in the token
        updates = tmp_path / "gateway" / "updates"
        agent = ModelUpdates(updates, f"{hub.url}/tuf", FAMILY, "fleet", first)
        install_trusted_root(agent.state_dir, root.read_bytes())
        assert agent.check(_live()).running == 2  # ngclient verified every role's signature
    assert load_model(agent.active).manifest.fleet_version == 2
    with pytest.raises(UpdatesError, match="no Ed25519 key labelled 'tuf-root-9'"):
        load_key(f"{root_token};object=tuf-root-9")


def test_hub_tuf_init_puts_the_keys_in_tokens(tmp_path: Path) -> None:
    # the same tokens as above: init finds the tuf-* keys there and uses them
    root_token, online_token = softhsm_token("tuf-root"), softhsm_token("tuf-online")
    data = tmp_path / "hub"
    result = CliRunner().invoke(
        cli,
        ["hub", "tuf", "init", "--data-dir", str(data), "--root-hsm", root_token,
         "--online-hsm", online_token],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "root keys (threshold 2 of 3) in PKCS#11 token" in result.output
    assert not list((data / "tuf-keys").glob("*.pem"))
    result = CliRunner().invoke(
        cli, ["hub", "tuf", "init", "--data-dir", str(tmp_path / "h2"), "--root-hsm",
              f"{root_token};object=x"],
    )  # fmt: skip
    assert result.exit_code == 1 and "without an object" in str(result.exception)
