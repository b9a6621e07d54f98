"""Coverage-guided fuzz targets (atheris / libFuzzer) for everything that parses outside input.

Each target takes raw bytes and may only fail with the parser's own "this input is bad"
error; anything else (a crash, an IndexError, a ValueError, a RecursionError) is a bug and
libFuzzer stops with the traceback and writes the input to ``crash-<sha1>``.

    uv run python fuzz/targets.py leaf -runs=100000          # libFuzzer options after the name
    uv run python fuzz/targets.py checkpoint -max_total_time=600
    uv run python fuzz/targets.py checkpoint crash-5da7ff06...  # replay one input

``tests/unit/test_fuzz.py`` runs every target for a few thousand inputs in ``make test``.
Found so far: non-ASCII base64 in a checkpoint or a note signature raised ValueError
instead of MalformedInput (fixed in attestation/signednote.py ``unb64``); ``upload`` ran out
of memory: cbor2 5.9's C decoder leaks on every invalid-UTF-8 string it refuses
(agronholm/cbor2#257), so outside bytes now go through attestation/cborsafe.py;
``microproof`` (only under some hash seeds, so CI saw it once): re-encoding a map whose key
is a tag over an array made the key unhashable, and cbor2 5.9's C tag hash then refused a
later, unrelated tag with a RuntimeError (fixed in ``cborsafe._halves``; the test now shows
the traceback atheris prints on stdout).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import atheris
import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

with atheris.instrument_imports(include=["agent", "attestation", "cloud_sync"]):
    from agent.config import parse_config
    from agent.connectors.mqtt import decode_message
    from agent.errors import ConfigError
    from attestation import cborsafe, cose, leafbatch, receipt
    from attestation.errors import AttestationError
    from attestation.microproof import decode_payload, parse_microproof
    from attestation.policy import ShedPolicyStatement, parse_policy, sign_policy
    from attestation.reading import decode_leaf
    from attestation.signednote import (
        Checkpoint,
        NoteVerifier,
        format_checkpoint,
        open_note,
        parse_checkpoint,
    )
    from attestation.signers.software import SoftwareSigner
    from attestation.verify import TrustAnchors, report_receipt
    from cloud_sync.errors import ApiError
    from cloud_sync.routes.proofs import parse_uploads as _parse_uploads
    from cloud_sync.settings import HubLimits, HubSettings
    from tests.hubkit import same_cbor_item

_SIGNER = SoftwareSigner.generate()
_PUBLIC = serialization.load_der_public_key(_SIGNER.public_key_der())
_NOTE_KEY = NoteVerifier.for_key(
    "hub.example/log", ed25519.Ed25519PrivateKey.generate().public_key()
)
_SETTINGS = HubSettings(
    data_dir=Path("/nonexistent"), db_url="", admin_token="x" * 32, limits=HubLimits()
)
_MQTT_TOML = (
    '[device]\nname = "f"\n[[mqtt]]\nname = "m"\nurl = "mqtt://127.0.0.1"\n'
    '[[mqtt.signals]]\nname = "a"\ntopic = "plant/+/telemetry"\npointer = "/v/0/a"\n'
)
_MQTT = parse_config(_MQTT_TOML, "f.toml").connectors["mqtt"][0]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def leaf(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        decode_leaf(data)


def leafcheck(data: bytes) -> None:
    """Differential: the native window check and the Python decoder judge a leaf alike."""
    native = leafbatch.native_verdict([data], 0)
    if native is None:
        raise RuntimeError("the native window check is not built")
    try:
        reference: object = leafbatch.window_root([data], 0, native=False)
    except AttestationError:
        reference = 0  # the index of the refused leaf
    if native != reference:
        raise RuntimeError(f"native {native!r} but Python {reference!r} for {data.hex()}")


def leafseq(data: bytes) -> None:
    """Differential: a window of leaves back to back (byte 0: how many the proof signs),
    judged alike by the native sequence check and the Python splitter and decoder."""
    if not data:
        return
    count, blob = 1 + data[0] % 8, data[1:]
    native = leafbatch.native_sequence_verdict(blob, count, 0)
    if native is None:
        raise RuntimeError("the native window check is not built")
    try:
        reference: object = leafbatch.sequence_root(blob, count, 0, native=False)
    except AttestationError as err:
        field = getattr(err, "field", "")
        # leaves[i]: leaf i is refused; "leaves": a count mismatch, found at or before count
        reference = int(field[7:-1]) if field.startswith("leaves[") else native
        if field == "leaves" and not (isinstance(native, int) and native <= count):
            reference = "a count mismatch"
    if native != reference:
        raise RuntimeError(f"native {native!r} but Python {reference!r} for {data.hex()}")


def plaincbor(data: bytes) -> None:
    """Differential: the native plain-CBOR decoder either passes an item to cbor2 (None) or
    builds exactly what cborsafe's cbor2 path builds, and calls it canonical exactly when
    ``cborsafe.dumps`` writes those bytes (ADR 0013)."""
    fast = cborsafe.decode_plain(data)
    if fast is None:
        return
    try:
        reference = cborsafe.loads_cbor2(data)
    except Exception as err:
        raise RuntimeError(f"native decoded {data.hex()}, cbor2 refused: {err!r}") from err
    if not same_cbor_item(fast[0], reference):
        raise RuntimeError(f"native {fast[0]!r} but cbor2 {reference!r} for {data.hex()}")
    try:
        written = cborsafe.dumps(reference)
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError):
        written = None  # nothing writes it back: not canonical
    if fast[1] != (written == data):
        raise RuntimeError(f"native canonical={fast[1]} disagrees with dumps for {data.hex()}")


def microproof(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_microproof(data)
    with contextlib.suppress(AttestationError):
        decode_payload(data)


def sign1(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        cose.verify_sign1(cose.decode_sign1(data), _PUBLIC)


def upload(data: bytes) -> None:
    """The hub's CBOR upload body, as it arrives over HTTP: a refusal must be a 4xx."""
    try:
        _parse_uploads(data, _SETTINGS)
    except ApiError as err:
        if not 400 <= err.status < 500:
            raise RuntimeError(f"hostile body answered with {err.status}") from err


def receipt_json(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON at all: the CLI reports that before it gets here
    with contextlib.suppress(AttestationError):
        report_receipt(receipt.receipt_from_json(doc), TrustAnchors())


def checkpoint(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_checkpoint(_text(data))
    with contextlib.suppress(AttestationError):
        open_note(_text(data), [_NOTE_KEY])


def policy(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_policy(data, _PUBLIC)


def config(data: bytes) -> None:
    """agent.toml text, as a technician might mistype it."""
    with contextlib.suppress(ConfigError):
        parse_config(_text(data), "fuzz.toml")


def mqtt(data: bytes) -> None:
    """A message on a subscribed topic: bad payloads are counted, never raised."""
    decode_message(_MQTT, "plant/x/telemetry", data, 0, lambda _s, _e: None)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "leaf": leaf,
    "leafcheck": leafcheck,
    "leafseq": leafseq,
    "plaincbor": plaincbor,
    "microproof": microproof,
    "sign1": sign1,
    "upload": upload,
    "receipt": receipt_json,
    "checkpoint": checkpoint,
    "policy": policy,
    "config": config,
    "mqtt": mqtt,
}


def seeds() -> dict[str, list[bytes]]:
    """One well-formed input per target, so mutation starts inside the parser, not at byte 0."""
    from tests.hubkit import Device, body  # noqa: PLC0415 - the real signed-window builder

    dev = Device(signer=_SIGNER)
    cose_bytes, leaves, rs = dev.window(4)
    rcpt = receipt.build_receipt(rs, 1, cose_bytes)
    note = format_checkpoint(Checkpoint("hub.example/log", 4, bytes(range(32))))
    return {
        "leaf": leaves,
        "leafcheck": leaves,
        "leafseq": [bytes([len(leaves) - 1]) + b"".join(leaves), bytes([0]) + leaves[0]],
        "plaincbor": [cose_bytes, body((cose_bytes, leaves))],
        "microproof": [cose_bytes, cose.decode_sign1(cose_bytes).payload],
        "sign1": [cose_bytes],
        "upload": [body((cose_bytes, leaves))],
        "receipt": [rcpt.dumps().encode()],
        "checkpoint": [note.encode(), (note + "\n\u2014 hub.example/log AAAAAQ==\n").encode()],
        "policy": [sign_policy(ShedPolicyStatement(10**9, 0.8), _SIGNER, iat=1_700_000_000)],
        "config": [_MQTT_TOML.encode()],
        "mqtt": [b'{"v": [{"a": 1.5}]}', b'{"v": [{"a": "x"}], "t": 1}'],
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "seed":
        for name, inputs in seeds().items():
            folder = Path(sys.argv[2]) / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(inputs):
                (folder / f"seed-{i}").write_bytes(data)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(
            f"usage: targets.py {{{','.join(TARGETS)}}} [corpus dir] [libFuzzer options]\n"
            "       targets.py seed DIR    (write a starting corpus per target under DIR)"
        )
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
