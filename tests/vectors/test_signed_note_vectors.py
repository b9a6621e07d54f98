"""C2SP signed-note conformance: the spec's own example note verifies with its vkey."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation import BrokenLink
from attestation.signednote import (
    Checkpoint,
    NoteVerifier,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)


def _example(vectors_dir: Path) -> tuple[str, str]:
    spec = (vectors_dir / "signed-note" / "signed-note.md").read_text()
    section = spec[spec.index("### Example") :]
    vkey = re.search(r"^    (\S+\+[0-9a-f]{8}\+\S+)$", section, re.M)
    note = re.search(r"```\n(.*?)```", section, re.S)
    assert vkey is not None
    assert note is not None
    return vkey.group(1), note.group(1)


def test_the_spec_example_note_verifies(vectors_dir: Path) -> None:
    vkey, note = _example(vectors_dir)
    assert open_note(note, [NoteVerifier.from_vkey(vkey)]) == "This is an example message.\n"


def test_the_spec_example_fails_when_its_text_changes(vectors_dir: Path) -> None:
    vkey, note = _example(vectors_dir)
    with pytest.raises(BrokenLink):
        open_note(
            note.replace("example message", "example massage"), [NoteVerifier.from_vkey(vkey)]
        )


def test_a_checkpoint_round_trips_through_sign_and_open() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cp = Checkpoint("factoryops.test/log", 42, bytes(range(32)))
    note = sign_note(format_checkpoint(cp), cp.origin, key.public_key(), key.sign)
    v = NoteVerifier.for_key(cp.origin, key.public_key())
    assert NoteVerifier.from_vkey(v.to_vkey()) == v
    assert parse_checkpoint(open_note(note, [v])) == cp
    other = NoteVerifier.for_key(cp.origin, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BrokenLink, match="no signature by a trusted key"):
        open_note(note, [other])
