"""check-config on MQTT TLS, credentials and publisher stamps: each mistake is named by its
key and line, and the password never shows in a config's repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_config
from agent.connectors.mqtt import MqttConfig
from agent.errors import ConfigError
from tests.tlskit import make_pki

SIGNAL = '[[mqtt.signals]]\nname = "p"\ntopic = "t"\npointer = "/p"\n'


def _parse(folder: Path, lines: str) -> MqttConfig:
    path = folder / "agent.toml"
    text = f'[device]\nname = "gw"\n[[mqtt]]\nname = "m"\n{lines}{SIGNAL}'
    (cfg,) = parse_config(text, str(path)).connectors["mqtt"]
    assert isinstance(cfg, MqttConfig)
    return cfg


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    pki = make_pki(tmp_path)
    for stem in ("ca", "client"):
        (tmp_path / f"{stem}.pem").rename(tmp_path / f"{stem}.crt")
    (tmp_path / "client.key").rename(tmp_path / "gw.key")
    assert pki.ca.parent == tmp_path
    (tmp_path / "pass").write_text("pw-123\n")
    (tmp_path / "pass").chmod(0o600)
    return tmp_path


TLS = 'url = "mqtts://broker:8883"\nca_file = "ca.crt"\n'


@pytest.mark.parametrize(
    ("lines", "key", "says"),
    [
        ('url = "mqtt://b"\nca_file = "ca.crt"\n', "ca_file", "mqtts://"),
        ('url = "mqtts://b"\nca_file = "nope.crt"\n', "ca_file", "no such file"),
        (TLS + 'cert_file = "client.crt"\n', "key_file", "together"),
        (TLS + 'key_file = "gw.key"\n', "cert_file", "together"),
        (TLS + 'cert_file = "ca.crt"\nkey_file = "gw.key"\n', "cert_file", "cannot be used"),
        ('url = "mqtts://b"\nca_file = "pass"\n', "ca_file", "cannot be used"),
        ('url = "mqtt://u:p@b"\n', "url", "credentials"),
        ('url = "mqtt://b"\npassword_file = "pass"\n', "password_file", "needs a username"),
        (
            'url = "mqtt://b"\nusername = "u"\npassword_env = "FACTORYOPS_UNSET_X"\n',
            "password_env",
            "not set",
        ),
        (
            'url = "mqtt://b"\nusername = "u"\npassword_file = "pass"\npassword_env = "X"\n',
            "password_env",
            "not both",
        ),
        ('url = "mqtt://b"\nsequence_pointer = "seq"\n', "sequence_pointer", "starts with '/'"),
        (
            'url = "mqtt://b"\npayload = "sparkplug-json"\nsequence_pointer = "/s"\n',
            "sequence_pointer",
            "json",
        ),
    ],
)
def test_each_mistake_is_named_by_its_key(folder: Path, lines: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        _parse(folder, lines)
    assert err.value.key == f"mqtt[0].{key}"
    assert err.value.line is not None


def test_a_password_file_others_may_read_is_refused(folder: Path) -> None:
    (folder / "pass").chmod(0o644)
    with pytest.raises(ConfigError, match="others may read it"):
        _parse(folder, 'url = "mqtt://b"\nusername = "u"\npassword_file = "pass"\n')


def test_tls_and_credentials_are_read_and_the_password_is_never_shown(folder: Path) -> None:
    cfg = _parse(
        folder,
        f'{TLS}cert_file = "client.crt"\nkey_file = "gw.key"\n'
        'username = "gw"\npassword_file = "pass"\n',
    )
    assert cfg.tls is not None and cfg.tls.verify_hostname and cfg.port == 8883
    assert cfg.password == "pw-123" and "pw-123" not in repr(cfg)
    assert cfg.url == "mqtts://broker:8883"
