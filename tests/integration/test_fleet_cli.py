"""The fleet commands as an operator types them: `hub tuf init|publish-model`, `hub job
submit|list|show|types|cancel`, `agent update trust|check|status`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from factoryops.cli import cli
from hil_tests.training import simulated_normal
from models_onnx.recipes import build_pca


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output + (str(result.exception or ""))


def test_the_fleet_commands_from_repository_to_gateway(tmp_path: Path) -> None:
    data, offline = tmp_path / "hub", tmp_path / "offline"
    code, out = _run("hub", "tuf", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    assert code == 0 and "threshold 2 of 3" in out, out
    assert sorted(p.name for p in offline.iterdir()) == ["root-1.pem", "root-2.pem", "root-3.pem"]
    code, out = _run("hub", "tuf", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    assert code == 1 and "holds a TUF repository already" in out

    signals, x = simulated_normal(60, seed=3)
    _, manifest = build_pca(x, signals, tmp_path / "models", model_id="site")
    code, out = _run(
        "hub", "tuf", "publish-model", str(manifest), "--family", "pca_t2_q", "--data-dir",
        str(data),
    )  # fmt: skip
    assert code == 0 and "pca_t2_q/fleet version 1" in out, out

    with HubServer(HubSettings.create(data)) as hub:
        common = ["--hub", hub.url, "--data-dir", str(data)]
        submit = ["hub", "job", "submit", "selftest", "--param", "steps=2", "--wait"]
        code, out = _run(*submit, *common)
        assert code == 0 and out.startswith("job 1 "), out
        code, out = _run("hub", "job", "show", "1", *common)
        assert code == 0 and json.loads(out)["state"] == "succeeded"
        code, out = _run("hub", "job", "list", *common)
        assert code == 0 and "selftest" in out and "succeeded" in out
        code, out = _run("hub", "job", "types", *common)
        assert code == 0 and "m2n2" in out and "rnd1.setpoint" in out
        code, out = _run("hub", "job", "cancel", "1", *common)
        assert code == 1 and "job_finished" in out
        code, out = _run("hub", "job", "submit", "nope", *common)
        assert code == 1 and "unknown_job_type" in out

        gateway = tmp_path / "gateway"
        _, first = build_pca(x, signals, gateway, model_id="factory")
        config = gateway / "agent.toml"
        config.write_text(
            '[device]\nname = "gw"\nsigner = "software"\nkey_file = "device.key"\n'
            f'[hub]\nurl = "{hub.url}"\n[spool]\npath = "spool.db"\n'
            f'[model]\nmanifest = "{first.name}"\n'
            '[[modbus]]\nname = "plc"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
            "address = 0\n",
            encoding="utf-8",
        )
        root = data / "tuf" / "metadata" / "1.root.json"
        channel = ["--config", str(config), "--family", "pca_t2_q"]
        code, out = _run("agent", "update", "trust", *channel, str(root))
        assert code == 0 and "trusting root version 1" in out, out
        code, out = _run("agent", "update", "check", *channel)
        assert code == 0, out
        assert json.loads(out.splitlines()[-1])["outcome"] == "waiting"  # no live readings yet
        code, out = _run("agent", "update", "status", *channel)
        assert code == 0 and json.loads(out)["model"]["available"] == 1, out
