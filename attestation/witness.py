"""Remember the newest hub checkpoint seen, and check every later one against it.

A transparency log only helps if its readers notice when the hub shows them two different
histories. ``CheckpointMemory`` keeps, per log origin, the newest signed checkpoint a
reader (the agent, ``factoryops verify``) has accepted, and judges each new one:

- same size, same root: nothing new;
- same size, another root: a FORK, proven by the two signed checkpoints alone;
- larger: accepted only with an RFC 9162 consistency proof from the remembered tree;
- smaller: an older view, accepted only with a consistency proof up to the remembered one
  (otherwise it may come from a rewritten log).

A fork is kept on disk (``forks``) with both signed notes, as evidence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attestation.durable import write_atomically
from attestation.errors import BrokenLink
from attestation.merkle import verify_consistency
from attestation.signednote import Checkpoint, NoteVerifier, open_note, parse_checkpoint

__all__ = ["CheckpointMemory", "Judgement", "ProofSource"]

# (size1, size2) -> consistency proof hashes; None when it cannot be had (offline)
ProofSource = Callable[[int, int], Sequence[bytes] | None]


@dataclass(frozen=True, slots=True)
class Judgement:
    status: str  # "first" | "same" | "newer" | "older" | "unchecked" | "fork"
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "fork"


class CheckpointMemory:
    """A small JSON file: {origin: {"note": signed checkpoint text}, "forks": [...]}."""

    def __init__(self, path: Path, verifiers: Sequence[NoteVerifier]) -> None:
        self.path = path
        self.verifiers = tuple(verifiers)
        self._doc: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}

    def newest(self, origin: str) -> tuple[Checkpoint, str] | None:
        entry = self._doc.get(origin)
        if not isinstance(entry, dict):
            return None
        note = str(entry["note"])
        return parse_checkpoint(open_note(note, self.verifiers)), note

    @property
    def forks(self) -> list[dict[str, str]]:
        forks = self._doc.get("forks", [])
        return list(forks) if isinstance(forks, list) else []

    def observe(self, note: str, proofs: ProofSource) -> Judgement:
        """Judge a signed checkpoint note; remembers it when it is newer and consistent.

        Raises ``BrokenLink("checkpoint")`` for a bad signature; a fork is a Judgement
        (and recorded), since the reader must report it, not crash.
        """
        cp = parse_checkpoint(open_note(note, self.verifiers))
        known = self.newest(cp.origin)
        if known is None:
            self._remember(cp.origin, note)
            return Judgement("first", f"remembered tree {cp.size}")
        old, old_note = known
        if cp.size == old.size:
            if cp.root == old.root:
                return Judgement("same", f"tree {cp.size} as remembered")
            return self._fork(old_note, note, f"two roots for tree size {cp.size}")
        small, big = (old, cp) if cp.size > old.size else (cp, old)
        proof = proofs(small.size, big.size) if small.size > 0 else []
        if small.size == 0:
            pass  # every tree extends the empty one
        elif proof is None:
            return Judgement(
                "unchecked", f"tree {cp.size} not checked against remembered {old.size}: offline"
            )
        else:
            try:
                verify_consistency(small.size, big.size, small.root, big.root, proof)
            except BrokenLink as err:
                return self._fork(old_note, note, f"inconsistent with remembered tree: {err}")
        if cp.size > old.size:
            self._remember(cp.origin, note)
            return Judgement("newer", f"tree {old.size} -> {cp.size} consistent")
        return Judgement("older", f"tree {cp.size} is a prefix of remembered {old.size}")

    def _fork(self, remembered: str, seen: str, why: str) -> Judgement:
        self._doc["forks"] = [*self.forks, {"why": why, "remembered": remembered, "seen": seen}]
        self._save()
        return Judgement("fork", f"FORK: the hub showed another history ({why})")

    def _remember(self, origin: str, note: str) -> None:
        self._doc[origin] = {"note": note}
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self._doc, indent=2).encode())
