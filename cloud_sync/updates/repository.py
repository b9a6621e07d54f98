"""The hub as a TUF repository (python-tuf Metadata API): root, targets, snapshot, timestamp.

Layout under the repository directory (consistent snapshots, TUF spec §5.5):
``metadata/N.root.json``, ``metadata/N.targets.json``, ``metadata/N.snapshot.json``,
``metadata/timestamp.json``; target files at ``targets/<dir>/<sha256>.<name>``.

Publishing writes the target files first, then the new targets, snapshot and finally the
timestamp, each by rename: until the timestamp is replaced no client can see the new
version, so a target appears only with its complete, signed metadata (and a crash in
between leaves unreferenced files, never a half-published target). One publisher at a time
(an exclusive file lock), so two jobs cannot both make targets version N.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from cloud_sync.updates.errors import UpdatesError
from cloud_sync.updates.keys import load_key, new_key, new_key_file, token_uri

__all__ = ["ONLINE_ROLES", "Lifetimes", "NewTarget", "TufRepository", "init_repository"]

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROOT_KEYS, ROOT_THRESHOLD = 3, 2
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long each role's metadata is valid: the short ones bound a freeze attack."""

    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=90)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(days=1)
    # re-signed when less than this fraction of the lifetime is left (serving refreshes)
    refresh_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class NewTarget:
    path: str  # e.g. models/autoencoder/fleet/3/model.onnx
    data: bytes
    custom: Mapping[str, Any] = field(default_factory=dict)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _persist(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UpdatesError(f"target path {path!r} must be relative, without . or .. parts")


def _online_key(keys_dir: Path, role: str, hsm: str | None) -> Signer:
    """``keys_dir/<role>.pem``, or a key made in the token ``hsm`` names, whose URI goes to
    ``keys_dir/<role>.uri`` (the PIN stays in the URI's pin-source, not in the file)."""
    if hsm is None:
        return new_key_file(keys_dir / f"{role}.pem")
    uri = token_uri(hsm, f"tuf-{role}")
    signer = new_key(uri)
    keys_dir.mkdir(parents=True, exist_ok=True)
    _persist(keys_dir / f"{role}.uri", (uri + "\n").encode())
    os.chmod(keys_dir / f"{role}.uri", 0o600)
    return signer


def init_repository(
    repo_dir: Path,
    offline_dir: Path | None,
    keys_dir: Path,
    *,
    now: dt.datetime | None = None,
    lifetimes: Lifetimes = Lifetimes(),
    root_hsm: str | None = None,
    online_hsm: str | None = None,
) -> Path:
    """A new repository: three root keys (threshold 2) in ``offline_dir`` or in the token
    ``root_hsm`` names (labels tuf-root-1..3), the online keys in ``keys_dir`` or in the
    token ``online_hsm`` names, version 1 of every role. Returns the root agents trust."""
    if (repo_dir / "metadata" / "1.root.json").exists():
        raise UpdatesError(f"{repo_dir} holds a TUF repository already", hint="rotate its root")
    if root_hsm is None and offline_dir is None:
        raise UpdatesError("root keys need an offline directory or a PKCS#11 token")
    at = now or _now()
    root_keys = (
        [token_uri(root_hsm, f"tuf-root-{i + 1}") for i in range(ROOT_KEYS)]
        if root_hsm is not None
        else [(offline_dir or Path()) / f"root-{i + 1}.pem" for i in range(ROOT_KEYS)]
    )
    root_signers = [new_key(where) for where in root_keys]
    online = {role: _online_key(keys_dir, role, online_hsm) for role in ONLINE_ROLES}
    root = Root(expires=at + lifetimes.root, consistent_snapshot=True)
    for s in root_signers:
        root.add_key(s.public_key, "root")
    root.roles["root"].threshold = ROOT_THRESHOLD
    for role, s in online.items():
        root.add_key(s.public_key, role)
    root_md = Metadata(root)
    for s in root_signers:
        root_md.sign(s, append=True)
    targets_md = Metadata(Targets(expires=at + lifetimes.targets))
    targets_md.sign(online["targets"])
    snapshot_md = Metadata(Snapshot(expires=at + lifetimes.snapshot))
    snapshot_md.sign(online["snapshot"])
    timestamp_md = Metadata(Timestamp(expires=at + lifetimes.timestamp))
    timestamp_md.sign(online["timestamp"])
    meta = repo_dir / "metadata"
    (repo_dir / "targets").mkdir(parents=True, exist_ok=True)
    _persist(meta / "1.targets.json", targets_md.to_bytes())
    _persist(meta / "1.snapshot.json", snapshot_md.to_bytes())
    _persist(meta / "timestamp.json", timestamp_md.to_bytes())
    _persist(meta / "1.root.json", root_md.to_bytes())
    return meta / "1.root.json"


@dataclass
class TufRepository:
    """The online side: publish targets, keep snapshot and timestamp fresh, rotate root."""

    dir: Path
    signers: Mapping[str, Signer]  # the online roles' signers
    clock: Clock = _now
    lifetimes: Lifetimes = Lifetimes()

    @classmethod
    def open(cls, repo_dir: Path, keys_dir: Path, **kw: Any) -> TufRepository:
        if not (repo_dir / "metadata" / "1.root.json").exists():
            raise UpdatesError(
                f"{repo_dir} is not a TUF repository",
                hint="create it offline: factoryops hub tuf init",
            )
        signers = {
            role: load_key(
                uri if (uri := keys_dir / f"{role}.uri").exists() else keys_dir / f"{role}.pem"
            )
            for role in ONLINE_ROLES
        }
        return cls(repo_dir, signers, **kw)

    @property
    def meta(self) -> Path:
        return self.dir / "metadata"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.dir / ".publish.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # reading --------------------------------------------------------------------------------
    def root_version(self) -> int:
        return max(int(p.name.split(".")[0]) for p in self.meta.glob("*.root.json"))

    def root(self) -> Metadata[Root]:
        return Metadata[Root].from_file(str(self.meta / f"{self.root_version()}.root.json"))

    def timestamp(self) -> Metadata[Timestamp]:
        return Metadata[Timestamp].from_file(str(self.meta / "timestamp.json"))

    def snapshot(self) -> Metadata[Snapshot]:
        v = self.timestamp().signed.snapshot_meta.version
        return Metadata[Snapshot].from_file(str(self.meta / f"{v}.snapshot.json"))

    def targets(self) -> Metadata[Targets]:
        v = self.snapshot().signed.meta["targets.json"].version
        return Metadata[Targets].from_file(str(self.meta / f"{v}.targets.json"))

    def target_file(self, path: str) -> Path | None:
        """Where the published bytes of ``path`` are (None: not published)."""
        info = self.targets().signed.targets.get(path)
        if info is None:
            return None
        d, _, name = path.rpartition("/")
        return self.dir / "targets" / d / f"{info.hashes['sha256']}.{name}"

    # writing --------------------------------------------------------------------------------
    def _sign_snapshot_and_timestamp(self, targets_version: int, now: dt.datetime) -> None:
        snap = self.snapshot()
        snap.signed.meta["targets.json"] = MetaFile(version=targets_version)
        snap.signed.version += 1
        snap.signed.expires = now + self.lifetimes.snapshot
        snap.sign(self.signers["snapshot"])
        _persist(self.meta / f"{snap.signed.version}.snapshot.json", snap.to_bytes())
        ts = self.timestamp()
        ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
        ts.signed.version += 1
        ts.signed.expires = now + self.lifetimes.timestamp
        ts.sign(self.signers["timestamp"])
        _persist(self.meta / "timestamp.json", ts.to_bytes())  # last: the switch

    def publish(self, items: Sequence[NewTarget]) -> int:
        """Add ``items`` as one new targets version (all or none visible); its number."""
        if not items:
            raise UpdatesError("nothing to publish")
        for item in items:
            _check_path(item.path)
        with self._locked():
            now = self.clock()
            targets = self.targets()
            for item in items:
                digest = hashlib.sha256(item.data).hexdigest()
                d, _, name = item.path.rpartition("/")
                _persist(self.dir / "targets" / d / f"{digest}.{name}", item.data)
                targets.signed.targets[item.path] = TargetFile(
                    len(item.data),
                    {"sha256": digest},
                    item.path,
                    {"custom": dict(item.custom)} if item.custom else None,
                )
            targets.signed.version += 1
            targets.signed.expires = now + self.lifetimes.targets
            targets.sign(self.signers["targets"])
            _persist(self.meta / f"{targets.signed.version}.targets.json", targets.to_bytes())
            self._sign_snapshot_and_timestamp(targets.signed.version, now)
            return targets.signed.version

    def refresh(self, *, force: bool = False) -> bool:
        """Re-sign snapshot and timestamp when past ``refresh_fraction`` of their lifetime
        (and targets likewise), so agents never see expired metadata from a live hub."""
        now = self.clock()

        def due(expires: dt.datetime, life: dt.timedelta) -> bool:
            return force or expires - now < life * self.lifetimes.refresh_fraction

        ts, snap = self.timestamp().signed, self.snapshot().signed
        if not (
            due(ts.expires, self.lifetimes.timestamp) or due(snap.expires, self.lifetimes.snapshot)
        ):
            targets = self.targets().signed
            if not due(targets.expires, self.lifetimes.targets):
                return False
        with self._locked():
            targets_md = self.targets()
            version = targets_md.signed.version
            if due(targets_md.signed.expires, self.lifetimes.targets):
                targets_md.signed.version += 1
                targets_md.signed.expires = now + self.lifetimes.targets
                targets_md.sign(self.signers["targets"])
                version = targets_md.signed.version
                _persist(self.meta / f"{version}.targets.json", targets_md.to_bytes())
            self._sign_snapshot_and_timestamp(version, now)
        return True

    def rotate_root(
        self,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        threshold: int = ROOT_THRESHOLD,
    ) -> int:
        """Root version N+1 with ``new_signers``' keys, signed by both the old and the new
        threshold (TUF §5.3.4: a client checks N+1 with N's keys and with its own)."""
        if len(new_signers) < threshold:
            raise UpdatesError(f"{len(new_signers)} new root keys for a threshold of {threshold}")
        with self._locked():
            md = self.root()
            root = md.signed
            for keyid in list(root.roles["root"].keyids):
                root.revoke_key(keyid, "root")
            for s in new_signers:
                root.add_key(s.public_key, "root")
            root.roles["root"] = Role(root.roles["root"].keyids, threshold)
            root.version += 1
            root.expires = self.clock() + self.lifetimes.root
            md.signatures.clear()
            for s in (*old_signers, *new_signers):
                md.sign(s, append=True)
            _persist(self.meta / f"{root.version}.root.json", md.to_bytes())
            return root.version
