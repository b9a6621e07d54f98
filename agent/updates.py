"""Signed model updates from the hub (TUF): fetch, verify, health-check, swap, roll back.

1. ``tuf.ngclient.Updater`` refreshes the metadata against the root installed at
   enrollment (``install_trusted_root``): rollback, freeze, mix-and-match, an arbitrary or
   endless target and a changed byte are refused there, and nothing else happens.
2. The model's three targets (pointer, manifest, ONNX) are downloaded to a staging
   directory, each checked against its signed length and hash, then the manifest against
   the ONNX file and the pointer's version; the directory becomes ``versions/<N>`` by rename.
3. Health check on live data: the old and the new model score the same recent readings; the
   new one's scores must be finite where the old one's are, and the share of rows it alarms
   on within ``HealthBound.max_alarm_rate_change`` of the old one's (a fault in the window
   alarms both; a model made for another plant alarms on everything or nothing).
4. Pass: the active manifest (a symlink the agent's model watcher follows) is replaced by
   rename, so the agent swaps models between two windows. Fail: the version is rejected and
   the previous one keeps scoring. ``rollback`` points back at the previous version.
A hub that cannot be reached changes nothing: the agent keeps (and boots with) the last
good version, which is what the symlink points at.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater, UpdaterConfig

from agent.config import ScoringConfig
from agent.errors import AgentError
from agent.inference import OnnxScorer
from attestation.durable import write_atomically
from attestation.reading import Reading
from models_onnx.errors import ModelError
from models_onnx.manifest import LoadedModel, load_model

__all__ = [
    "HealthBound",
    "ModelUpdates",
    "UpdateResult",
    "UpdateState",
    "UpdatesError",
    "health_check",
    "install_trusted_root",
    "tuf_updater",
]

log = logging.getLogger(__name__)
_UNTUNED = ScoringConfig()  # the manifest's own limit and smoothing


class UpdatesError(AgentError):
    """The update client cannot work (no trusted root, unusable state directory)."""


@dataclass(frozen=True, slots=True)
class HealthBound:
    # of the recent rows, how far apart the share the two models alarm on may be
    max_alarm_rate_change: float = 0.5
    min_live_rows: int = 8  # fewer recent readings than this: no verdict, try later


@dataclass(frozen=True, slots=True)
class UpdateResult:
    outcome: str  # installed | current | refused | unhealthy | unreachable | waiting | none
    detail: str
    running: int | None
    available: int | None = None


@dataclass
class UpdateState:
    """``state.json``: what runs, what ran before, what the hub offers, what was refused."""

    running: int | None = None
    previous: int | None = None
    available: int | None = None
    rejected: list[int] = field(default_factory=list)
    last: str = ""

    @classmethod
    def load(cls, path: Path) -> UpdateState:
        if not path.exists():
            return cls()
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: doc[k] for k in ("running", "previous", "available", "rejected", "last")})

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self), indent=2).encode())


def install_trusted_root(state_dir: Path, root_json: bytes) -> int:
    """Install the hub's root metadata as this agent's trust anchor (enrollment step)."""
    try:
        md = Metadata[Root].from_bytes(root_json)
        md.verify_delegate(Root.type, md)  # self-signed by its own threshold
    except Exception as err:
        raise UpdatesError(
            f"not a valid TUF root: {err}", hint="copy metadata/1.root.json from the hub"
        ) from err
    meta = state_dir / "tuf"
    if (meta / "root.json").exists():
        raise UpdatesError(
            f"{meta / 'root.json'} exists: a root is already trusted",
            hint="roots change by rotation, which the agent follows itself",
        )
    meta.mkdir(parents=True, exist_ok=True)
    write_atomically(meta / "root.json", root_json)
    return int(md.signed.version)


def _alarms(model: LoadedModel, live: Sequence[Reading], scoring: ScoringConfig) -> list[float]:
    """Per reading: 1.0 alarmed, 0.0 not, NaN not scored (as the agent would decide)."""
    scorer = OnnxScorer(model, scoring)
    scores, t = scorer.score_window(live).scores, scorer.threshold
    return [float(s > t) if math.isfinite(s) else math.nan for s in scores]


def health_check(
    old: LoadedModel | None,
    new: LoadedModel,
    live: Sequence[Reading],
    bound: HealthBound,
    scoring: ScoringConfig = _UNTUNED,
    new_scoring: ScoringConfig | None = None,
) -> str | None:
    """Why ``new`` (scored with ``new_scoring``, by default the running ``scoring``) is
    unhealthy on ``live`` beside ``old`` scored with ``scoring`` (None: healthy). A
    configuration fragment passes the same model twice with two scorings."""
    new_a = _alarms(new, live, new_scoring or scoring)
    if not any(math.isfinite(a) for a in new_a):
        return "the new model scores no recent row (all NaN or infinite)"
    if old is None:
        return None
    old_a = _alarms(old, live, scoring)
    pairs = list(zip(old_a, new_a, strict=True))
    lost = sum(1 for o, n in pairs if math.isfinite(o) and not math.isfinite(n))
    if lost:
        return f"the new model gives {lost} non-finite scores where the old one scores"
    both = [(o, n) for o, n in pairs if math.isfinite(o)]
    if both:
        # the same window, both decisions: a live fault alarms both (not a reason to refuse),
        # a model calibrated for another plant alarms everything or nothing
        rate_old = statistics.fmean(o for o, _ in both)
        rate_new = statistics.fmean(n for _, n in both)
        if abs(rate_new - rate_old) > bound.max_alarm_rate_change:
            return (
                f"it alarms on {rate_new:.0%} of the recent rows, the running model on"
                f" {rate_old:.0%} (bound: {bound.max_alarm_rate_change:.0%} apart)"
            )
    return None


def tuf_updater(meta: Path, repo_url: str, staging: Path, config: UpdaterConfig) -> Updater:
    """An ngclient Updater over the root installed in ``meta`` (as rotated since)."""
    if not (meta / "root.json").exists():
        raise UpdatesError(
            f"no trusted TUF root in {meta}",
            hint="install the hub's root: factoryops agent update trust --config agent.toml ROOT",
        )
    base = repo_url.rstrip("/")
    return Updater(
        str(meta), f"{base}/metadata/", str(staging), f"{base}/targets/", config=config,
        bootstrap=None,
    )  # fmt: skip


def _symlink_atomically(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    fd = os.open(link.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ModelUpdates:
    """One model channel (family and site) of one agent."""

    state_dir: Path
    repo_url: str  # the hub's TUF repository: <hub>/tuf (metadata/ and targets/ under it)
    family: str
    site: str
    active: Path  # the [model] manifest of agent.toml: becomes a symlink into versions/
    bound: HealthBound = HealthBound()
    tuf_config: UpdaterConfig = field(default_factory=UpdaterConfig)
    scoring: ScoringConfig = _UNTUNED  # the running settings, for the health check

    @property
    def _state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def _versions(self) -> Path:
        return self.state_dir / "versions"

    def state(self) -> UpdateState:
        return UpdateState.load(self._state_path)

    def _updater(self, staging: Path) -> Updater:
        return tuf_updater(self.state_dir / "tuf", self.repo_url, staging, self.tuf_config)

    def check(self, live: Sequence[Reading]) -> UpdateResult:
        """Fetch, verify, check and install the newest version if it is healthy."""
        st = self.state()
        staging = self._versions / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            result = self._check(st, staging, live)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        st = self.state()
        st.last = f"{result.outcome}: {result.detail}"
        if result.available is not None:
            st.available = result.available
        st.save(self._state_path)
        log.info("model update %s/%s: %s", self.family, self.site, st.last)
        return result

    def _check(self, st: UpdateState, staging: Path, live: Sequence[Reading]) -> UpdateResult:
        pointer = f"models/{self.family}/{self.site}/latest.json"
        try:
            updater = self._updater(staging)
            updater.refresh()
            info = updater.get_targetinfo(pointer)
            if info is None:
                return UpdateResult("none", f"nothing published at {pointer}", st.running)
            custom = info.custom if isinstance(info.custom, dict) else {}
            version = int(custom.get("version", 0))
            if st.running is not None and version <= st.running:
                return UpdateResult("current", f"running {st.running}", st.running, version)
            if version in st.rejected:
                return UpdateResult(
                    "current", f"version {version} was refused before", st.running, version
                )
            files = self._download(updater, staging, pointer, version)
        except (tuf_errors.DownloadLengthMismatchError, tuf_errors.RepositoryError) as err:
            # an attack or a broken repository: refuse, keep what runs
            return UpdateResult("refused", f"{type(err).__name__}: {err}", st.running)
        except tuf_errors.DownloadError as err:
            return UpdateResult(
                "unreachable", f"hub unreachable ({err}); running the last good version", st.running
            )
        try:
            new = load_model(files / "manifest.json")
        except ModelError as err:
            return UpdateResult("refused", str(err), st.running, version)
        if new.manifest.fleet_version != version:
            return UpdateResult(
                "refused",
                f"the manifest says version {new.manifest.fleet_version}, the pointer {version}",
                st.running,
                version,
            )
        if len(live) < self.bound.min_live_rows:
            return UpdateResult(
                "waiting",
                f"{len(live)} recent readings, need {self.bound.min_live_rows}",
                st.running,
                version,
            )
        old = self._load_active()
        reason = health_check(old, new, live, self.bound, self.scoring)
        if reason is not None:
            st.rejected.append(version)
            st.save(self._state_path)
            return UpdateResult(
                "unhealthy", f"version {version} refused: {reason}", st.running, version
            )
        self._install(st, version, files)
        return UpdateResult("installed", f"version {version} is scoring", version, version)

    def _download(self, updater: Updater, staging: Path, pointer: str, version: int) -> Path:
        info = updater.get_targetinfo(pointer)
        assert info is not None
        doc = json.loads(
            Path(updater.download_target(info, str(staging / "latest.json"))).read_text()
        )
        if doc.get("version") != version:
            raise tuf_errors.RepositoryError(
                f"pointer body says {doc.get('version')}, its metadata {version}"
            )
        out = staging / str(version)
        out.mkdir()
        for name, key in (("manifest.json", "manifest"), ("model.onnx", "onnx")):
            target = updater.get_targetinfo(str(doc[key]))
            if target is None:
                raise tuf_errors.RepositoryError(f"{doc[key]} is not a signed target")
            updater.download_target(target, str(out / name))
        return out

    def _load_active(self) -> LoadedModel | None:
        if not self.active.exists():
            return None
        return load_model(self.active)

    def _install(self, st: UpdateState, version: int, files: Path) -> None:
        self._versions.mkdir(parents=True, exist_ok=True)
        if st.running is None and self.active.exists() and not self.active.is_symlink():
            # the model the agent was installed with becomes version 0, to roll back to
            self._keep_initial()
            st.running = 0
        final = self._versions / str(version)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(files, final)
        _symlink_atomically(self.active, final / "manifest.json")
        st.previous, st.running = st.running, version
        st.save(self._state_path)

    def _keep_initial(self) -> None:
        first = load_model(self.active)
        keep = self._versions / "0"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(first.path, keep / first.manifest.onnx_file)
        shutil.copy2(self.active, keep / "manifest.json")

    def rollback(self) -> UpdateResult:
        """Point the agent back at the previous version (when the new one misbehaves live)."""
        st = self.state()
        if st.previous is None or not (self._versions / str(st.previous)).is_dir():
            return UpdateResult("refused", "no previous version to roll back to", st.running)
        bad = st.running
        _symlink_atomically(self.active, self._versions / str(st.previous) / "manifest.json")
        if bad is not None:
            st.rejected.append(bad)
        st.running, st.previous = st.previous, None
        st.last = f"rolled back from {bad} to {st.running}"
        st.save(self._state_path)
        return UpdateResult("rolled_back", st.last, st.running)

    def status(self) -> dict[str, Any]:
        st = self.state()
        return {"family": self.family, "site": self.site, **asdict(st)}
