"""Signed model updates end to end: the hub's TUF repository (python-tuf Metadata API) served
over HTTP, the agent's ngclient Updater, the health check and the atomic swap.

Attacks are made the way an attacker who holds the hub's storage or a mirror (never the
keys) would: by changing the files served. Each must be refused by the agent, with the old
model still scoring.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.inference import OnnxScorer
from agent.updates import ModelUpdates, UpdateResult, install_trusted_root
from attestation.microproof import MicroProof, decode_payload, encode_payload
from attestation.reading import Reading
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.updates import PublishRefused, TufRepository, init_repository, publish_model
from cloud_sync.updates.keys import load_signer, new_key_file
from hil_tests.training import simulated_normal
from models_onnx.manifest import load_model
from models_onnx.recipes import build_pca

FAMILY = "pca_t2_q"


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """A static mirror of the repository directory; ``endless`` paths never stop sending."""

    endless: ClassVar[set[str]] = set()

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path in self.endless:
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b" " * 65536)
            except (BrokenPipeError, ConnectionResetError):
                return
        super().do_GET()


@dataclass
class Bench:
    repo: TufRepository
    offline: Path
    models: Path
    live: list[Reading]
    agent: ModelUpdates

    def publish(self, model_id: str, *, job: int | None = None, scale: float = 1.0) -> int:
        signals, x = simulated_normal(60, seed=3)
        _, manifest = build_pca(x * scale, signals, self.models, model_id=model_id)
        return publish_model(self.repo, manifest, family=FAMILY, site="fleet", job_id=job).version

    def check(self) -> UpdateResult:
        return self.agent.check(self.live)

    def old_model_still_scores(self) -> bool:
        scores = OnnxScorer.open(self.agent.active).score_window(self.live).scores
        return sum(math.isfinite(s) for s in scores) > len(scores) // 2

    def served(self, name: str) -> Path:
        return self.repo.dir / "metadata" / name


def _live() -> list[Reading]:
    signals, x = simulated_normal(20, seed=11)
    t0 = 1_700_000_000_000_000_000
    return [
        Reading(i * len(signals) + j, t0 + i * 100_000_000, s, float(v), "")
        for i, row in enumerate(x)
        for j, (s, v) in enumerate(zip(signals, row, strict=True))
    ]


def _gateway(tmp_path: Path, repo_url: str, root: Path) -> ModelUpdates:
    gateway = tmp_path / "gateway"
    signals, x = simulated_normal(60, seed=3)
    _, first = build_pca(x, signals, gateway, model_id="factory")  # installed with the gateway
    agent = ModelUpdates(gateway / "updates", repo_url, FAMILY, "fleet", first)
    install_trusted_root(agent.state_dir, root.read_bytes())
    return agent


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """A repository served by a static mirror (the attacker can write the mirror's files)."""
    repo_dir, offline = tmp_path / "tuf", tmp_path / "offline"
    root = init_repository(repo_dir, offline, tmp_path / "tuf-keys")
    repo = TufRepository.open(repo_dir, tmp_path / "tuf-keys")

    def handler(*a: Any) -> _Mirror:
        return _Mirror(*a, directory=str(repo_dir))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield Bench(repo, offline, tmp_path / "models", _live(), _gateway(tmp_path, url, root))
    _Mirror.endless = set()
    server.shutdown()
    server.server_close()
    thread.join()


def _refused(bench: Bench, result: UpdateResult, running: int | None, why: str) -> None:
    assert result.outcome == "refused", result
    assert why in result.detail, result.detail
    assert result.running == running
    assert bench.old_model_still_scores()


def test_a_published_model_is_installed_and_proofs_name_its_version_and_job(
    tmp_path: Path,
) -> None:
    """Through the hub itself: /tuf/metadata and /tuf/targets, served by the FastAPI app."""
    settings = HubSettings.create(tmp_path / "hub")
    root = init_repository(
        settings.data_dir / "tuf", tmp_path / "offline", settings.data_dir / "tuf-keys"
    )
    repo = TufRepository.open(settings.data_dir / "tuf", settings.data_dir / "tuf-keys")
    signals, x = simulated_normal(60, seed=3)
    _, manifest = build_pca(x, signals, tmp_path / "models", model_id="merged")
    published = publish_model(repo, manifest, family=FAMILY, site="fleet", job_id=42)
    with HubServer(settings) as hub:
        agent = _gateway(tmp_path, f"{hub.url}/tuf", root)
        first = agent.check(_live())
        again = agent.check(_live())
    assert first.outcome == "installed" and first.running == published.version == 1, first
    assert again.outcome == "current"
    assert agent.active.is_symlink()
    scored = OnnxScorer.open(agent.active).score_window(_live())
    assert scored.model.fleet_version == 1 and scored.model.job == 42
    mp = MicroProof(0, 0, 0, 0, 0, 0, bytes(32), bytes(32), model=scored.model)
    back = decode_payload(encode_payload(mp)).model
    assert back is not None and (back.fleet_version, back.job) == (1, 42)
    assert agent.status()["running"] == 1 and agent.status()["previous"] == 0


def test_an_unreachable_hub_leaves_the_last_good_version_running(bench: Bench) -> None:
    bench.publish("v1")
    assert bench.check().outcome == "installed"
    bench.agent.repo_url = "http://127.0.0.1:9/tuf"  # discard port: nothing listens
    result = bench.check()
    assert result.outcome == "unreachable" and result.running == 1
    assert load_model(bench.agent.active).manifest.fleet_version == 1  # what a boot loads


def test_rollback_attack_an_older_timestamp_is_refused(bench: Bench) -> None:
    bench.publish("v1")
    old = bench.served("timestamp.json").read_bytes()
    bench.publish("v2")
    assert bench.check().running == 2  # the agent has seen the newer timestamp
    bench.served("timestamp.json").write_bytes(old)
    _refused(bench, bench.check(), 2, "BadVersionNumberError")


def test_freeze_attack_an_expired_timestamp_is_refused(bench: Bench) -> None:
    long_ago = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=3)
    bench.repo.clock = lambda: long_ago  # the mirror keeps serving what was signed then
    bench.publish("v1")
    _refused(bench, bench.check(), None, "ExpiredMetadataError")


def test_mix_and_match_a_targets_file_of_another_snapshot_is_refused(bench: Bench) -> None:
    bench.publish("v1")
    older = bench.served("2.targets.json").read_bytes()
    bench.publish("v2")  # targets version 3, named by the new snapshot
    bench.served("3.targets.json").write_bytes(older)
    _refused(bench, bench.check(), None, "BadVersionNumberError")


def test_an_arbitrary_target_added_to_the_metadata_is_refused(bench: Bench) -> None:
    bench.publish("v1")
    path = bench.served("2.targets.json")
    doc = json.loads(path.read_text())
    doc["signed"]["targets"]["models/pca_t2_q/fleet/latest.json"]["hashes"]["sha256"] = "ab" * 32
    path.write_text(json.dumps(doc))
    _refused(bench, bench.check(), None, "UnsignedMetadataError")


def test_endless_data_is_cut_at_the_signed_or_configured_length(bench: Bench) -> None:
    bench.publish("v1")
    _Mirror.endless = {"/metadata/timestamp.json"}
    _refused(bench, bench.check(), None, "DownloadLengthMismatchError")
    _Mirror.endless = set()
    target = next((bench.repo.dir / "targets").rglob("*.model.onnx"))
    _Mirror.endless = {"/" + str(target.relative_to(bench.repo.dir))}
    _refused(bench, bench.check(), None, "DownloadLengthMismatchError")


def test_a_tampered_model_file_is_refused(bench: Bench) -> None:
    bench.publish("v1")
    target = next((bench.repo.dir / "targets").rglob("*.model.onnx"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    _refused(bench, bench.check(), None, "LengthOrHashMismatchError")


def test_an_unhealthy_model_is_refused_on_live_data_and_not_retried(bench: Bench) -> None:
    bench.publish("v1")
    assert bench.check().running == 1
    bench.publish("v2-wrong-units", scale=10.0)  # trained on readings 10x too large
    result = bench.check()
    assert result.outcome == "unhealthy" and "alarms on 100% of the recent rows" in result.detail
    assert result.running == 1 and bench.agent.state().rejected == [2]
    assert bench.check().outcome == "current"  # not fetched again
    assert load_model(bench.agent.active).manifest.fleet_version == 1


def test_rollback_goes_back_to_the_previous_version(bench: Bench) -> None:
    bench.publish("v1")
    bench.check()
    bench.publish("v2")
    assert bench.check().running == 2
    assert bench.agent.rollback().running == 1
    assert load_model(bench.agent.active).manifest.fleet_version == 1
    assert bench.check().outcome == "current"  # 2 was rolled back: not taken again


def test_a_root_rotation_is_followed(bench: Bench) -> None:
    bench.publish("v1")
    assert bench.check().running == 1
    old = [load_signer(bench.offline / f"root-{i}.pem") for i in (1, 3)]  # 2 of 3
    new = [new_key_file(bench.offline / "new" / f"root-{i}.pem") for i in (1, 2, 3)]
    assert bench.repo.rotate_root(old, new) == 2
    bench.publish("v2")
    assert bench.check().running == 2
    trusted = json.loads((bench.agent.state_dir / "tuf" / "root.json").read_text())
    assert trusted["signed"]["version"] == 2


def test_a_root_signed_below_its_threshold_is_refused(bench: Bench) -> None:
    bench.publish("v1")
    one = [load_signer(bench.offline / "root-1.pem")]
    new = [new_key_file(bench.offline / "new" / f"root-{i}.pem") for i in (1, 2, 3)]
    bench.repo.rotate_root(one, new)  # only 1 of the 2 old signatures it needs
    _refused(bench, bench.check(), None, "UnsignedMetadataError")


def test_the_hub_refuses_to_publish_a_model_that_does_not_match_its_manifest(
    bench: Bench,
) -> None:
    signals, x = simulated_normal(60, seed=3)
    _, manifest = build_pca(x, signals, bench.models, model_id="broken")
    onnx = manifest.parent / json.loads(manifest.read_text())["onnx_file"]
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    before = bench.repo.targets().signed.version
    with pytest.raises(PublishRefused, match="hashes to"):
        publish_model(bench.repo, manifest, family=FAMILY, site="fleet", job_id=None)
    _, good = build_pca(x, signals, bench.models, model_id="good")
    with pytest.raises(PublishRefused, match="cannot be published as family 'autoencoder'"):
        publish_model(bench.repo, good, family="autoencoder", site="fleet", job_id=None)
    assert bench.repo.targets().signed.version == before  # nothing half-published
