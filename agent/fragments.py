"""Signed configuration fragments from the hub (TUF targets ``config/<site>/<name>.toml``):
fetch, check with the agent's own config rules, apply live, keep on probation, roll back.

1. ``tuf.ngclient`` refreshes the metadata (the model channel's trusted root) and downloads
   the fragment: its length and hash are signed, so a changed byte is refused there.
2. The fragment is checked alone (``parse_fragment``: only ``FRAGMENT_KEYS``, each value by
   agent.toml's own rule) and then laid over agent.toml with the other installed fragments
   (``parse_config``): a fragment that would leave the whole config invalid is refused.
3. Health check on live data: the running model scores the agent's newest readings with
   the old and the new settings (``agent.updates.health_check``, the models' rule).
4. Install: ``versions/<name>/<N>.toml`` is kept, ``active/<name>.toml`` replaced by rename,
   and the running scorer takes the new settings between two windows. The fragment is then
   on probation (``trial``).
5. Probation: after ``probation_s`` the agent's own status must show no new problem and
   more windows signed; otherwise the previous settings come back and the version is
   refused for good. A trial found at a second start (the agent stopped or crashed before
   its probation ended, twice) is rolled back before the config is loaded (``boot``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import UpdaterConfig

from agent.config import (
    AgentConfig,
    ScoringConfig,
    fragments_dir,
    load_config,
    parse_config,
    parse_fragment,
)
from agent.errors import ConfigError
from agent.updates import HealthBound, UpdateResult, health_check, tuf_updater
from attestation.durable import write_atomically
from attestation.reading import Reading
from models_onnx.manifest import LoadedModel

__all__ = ["ConfigFragments", "FragmentState", "Trial", "boot"]

log = logging.getLogger(__name__)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


@dataclass
class Trial:
    """A fragment applied and not yet confirmed: what to judge it by, what to go back to."""

    name: str
    version: int
    previous: int | None  # the version it replaced (None: there was no such fragment)
    since_ns: int
    windows: int  # windows signed when it was applied: the agent must keep signing
    problems: list[str]  # the agent's problems then: only new ones count against it
    boots: int = 0  # agent starts seen while on trial


@dataclass
class FragmentState:
    """``state.json``: the applied version of each fragment, refusals, the trial."""

    applied: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, list[int]] = field(default_factory=dict)
    trial: Trial | None = None
    last: str = ""

    @classmethod
    def load(cls, path: Path) -> FragmentState:
        if not path.exists():
            return cls()
        doc = json.loads(path.read_text(encoding="utf-8"))
        trial = Trial(**doc["trial"]) if doc.get("trial") else None
        return cls(doc["applied"], doc["rejected"], trial, doc["last"])

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self), indent=2).encode())

    def refuse(self, name: str, version: int) -> None:
        self.rejected.setdefault(name, []).append(version)


@dataclass
class ConfigFragments:
    """The fragments one agent takes (``[updates] fragments``) from ``config/<site>/``."""

    config_path: Path  # agent.toml: every fragment is checked laid over it
    dir: Path  # updates/config: active/, versions/, state.json
    meta: Path  # the TUF metadata directory (the model channel's trusted root)
    repo_url: str
    site: str
    names: tuple[str, ...]
    bound: HealthBound = field(default_factory=HealthBound)
    probation_s: float = 60.0
    tuf_config: UpdaterConfig = field(default_factory=UpdaterConfig)

    @classmethod
    def for_config(cls, cfg: AgentConfig, config_path: Path, meta: Path) -> ConfigFragments:
        u, url = cfg.updates, cfg.hub.url
        if u is None or u.config_site is None or url is None:
            raise ConfigError(str(config_path), "updates.config_site", None, "not set")
        return cls(
            config_path, fragments_dir(cfg).parent, meta, f"{url}/tuf", u.config_site,
            u.fragments, probation_s=u.probation_s,
        )  # fmt: skip

    @property
    def _state_path(self) -> Path:
        return self.dir / "state.json"

    def state(self) -> FragmentState:
        return FragmentState.load(self._state_path)

    def _active(self, name: str) -> Path:
        return self.dir / "active" / f"{name}.toml"

    def _kept(self, name: str, version: int) -> Path:
        return self.dir / "versions" / name / f"{version}.toml"

    # checking -------------------------------------------------------------------------------
    def _overlay(self, name: str, text: str) -> ScoringConfig:
        """The whole config with ``text`` as fragment ``name``: checked, or ConfigError."""
        frags = []
        for other in self.names:
            path = self._active(other)
            if other == name:
                frags.append((f"config/{self.site}/{name}.toml", text))
            elif path.exists():
                frags.append((str(path), path.read_text(encoding="utf-8")))
        main = self.config_path.read_text(encoding="utf-8")
        base = self.config_path.resolve().parent
        return parse_config(main, str(self.config_path), base_dir=base, fragments=frags).scoring

    def check(
        self,
        live: Sequence[Reading],
        model: LoadedModel | None,
        scoring: ScoringConfig,
        windows: int,
        problems: Sequence[str],
        now_ns: int,
    ) -> tuple[list[UpdateResult], ScoringConfig | None]:
        """One check of every fragment; installs at most one (it then goes on trial).
        Returns what happened to each and the settings to apply now (None: no change)."""
        st = self.state()
        if st.trial is not None:  # one change at a time: judge it first
            return [UpdateResult("waiting", f"{st.trial.name} is on probation", None)], None
        staging = self.dir / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        results: list[UpdateResult] = []
        try:
            updater = tuf_updater(self.meta, self.repo_url, staging, self.tuf_config)
            updater.refresh()
            for name in self.names:
                path = f"config/{self.site}/{name}.toml"
                info = updater.get_targetinfo(path)
                if info is None:
                    results.append(UpdateResult("none", f"nothing published at {path}", None))
                    continue
                custom = info.custom if isinstance(info.custom, dict) else {}
                version, running = int(custom.get("version", 0)), st.applied.get(name)
                if (running is not None and version <= running) or version in st.rejected.get(
                    name, []
                ):
                    results.append(UpdateResult("current", f"{name}", running, version))
                    continue
                text = Path(updater.download_target(info, str(staging / f"{name}.toml")))
                got = self._take(st, name, version, text.read_text(encoding="utf-8"),
                                 live, model, scoring)  # fmt: skip
                if isinstance(got, UpdateResult):
                    results.append(got)
                    continue
                st.trial = Trial(name, version, running, now_ns, windows, list(problems))
                st.applied[name] = version
                results.append(UpdateResult("installed", f"{name} version {version} applied,"
                                            f" on probation {self.probation_s:.0f} s",
                                            version, version))  # fmt: skip
                self._save(st, results)
                return results, got
        except (tuf_errors.DownloadLengthMismatchError, tuf_errors.RepositoryError) as err:
            results.append(UpdateResult("refused", f"{type(err).__name__}: {err}", None))
        except tuf_errors.DownloadError as err:
            results.append(UpdateResult("unreachable", f"hub unreachable ({err})", None))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._save(st, results)
        return results, None

    def _take(
        self,
        st: FragmentState,
        name: str,
        version: int,
        text: str,
        live: Sequence[Reading],
        model: LoadedModel | None,
        scoring: ScoringConfig,
    ) -> ScoringConfig | UpdateResult:
        """Check fragment ``name`` version ``version``; install it (new settings) or say why
        not (and remember the refusal)."""
        try:
            parse_fragment(text, f"config/{self.site}/{name}.toml")
            new = self._overlay(name, text)
        except ConfigError as err:
            st.refuse(name, version)
            return UpdateResult("refused", f"{name} version {version}: {err}", None, version)
        if model is not None:
            if len(live) < self.bound.min_live_rows:
                return UpdateResult("waiting", f"{len(live)} recent readings", None, version)
            reason = health_check(model, model, live, self.bound, scoring, new)
            if reason is not None:
                st.refuse(name, version)
                return UpdateResult(
                    "unhealthy", f"{name} version {version} refused: {reason}", None, version
                )
        _write(self._kept(name, version), text.encode())
        _write(self._active(name), text.encode())
        return new

    def _save(self, st: FragmentState, results: Sequence[UpdateResult]) -> None:
        moved = [r for r in results if r.outcome not in ("none", "current")]
        if moved:
            st.last = "; ".join(f"{r.outcome}: {r.detail}" for r in moved)
            log.info("config fragments: %s", st.last)
        st.save(self._state_path)

    # probation ------------------------------------------------------------------------------
    def settle(
        self, windows: int, problems: Sequence[str], written_ns: int
    ) -> tuple[UpdateResult | None, ScoringConfig | None]:
        """Judge the fragment on trial by the agent's status written ``written_ns``, once
        that is past the probation (an older status cannot speak for the fragment): confirm
        it, or roll it back (returning the settings to apply)."""
        st = self.state()
        t = st.trial
        if t is None or written_ns - t.since_ns < self.probation_s * 1e9:
            return None, None
        new = [p for p in problems if p not in t.problems]
        if not new and windows > t.windows:
            st.trial, st.last = None, f"{t.name} version {t.version} confirmed"
            st.save(self._state_path)
            return UpdateResult("confirmed", st.last, t.version), None
        why = "; ".join(new) or f"no window signed since it was applied ({windows})"
        return self._roll_back(st, f"the agent was not healthy with it: {why}"), self.scoring()

    def _roll_back(self, st: FragmentState, why: str) -> UpdateResult:
        t = st.trial
        assert t is not None
        active = self._active(t.name)
        if t.previous is not None and self._kept(t.name, t.previous).exists():
            _write(active, self._kept(t.name, t.previous).read_bytes())
            st.applied[t.name] = t.previous
        else:
            active.unlink(missing_ok=True)
            st.applied.pop(t.name, None)
        st.refuse(t.name, t.version)
        st.trial = None
        st.last = f"{t.name} version {t.version} rolled back: {why}"
        st.save(self._state_path)
        log.error("config fragments: %s", st.last)
        return UpdateResult("rolled_back", st.last, st.applied.get(t.name), t.version)

    def scoring(self) -> ScoringConfig:
        """The settings of agent.toml with the installed fragments."""
        return load_config(self.config_path).scoring

    def on_boot(self) -> UpdateResult | None:
        """At a start: count it against the fragment on trial; the second start with the
        same trial rolls it back (the agent did not come up healthy with it)."""
        st = self.state()
        if st.trial is None:
            return None
        st.trial.boots += 1
        if st.trial.boots >= 2:
            return self._roll_back(st, "the agent restarted twice before its probation ended")
        st.save(self._state_path)
        return None

    def refuse_active(self, path: str, err: ConfigError) -> UpdateResult | None:
        """An installed fragment that no longer fits agent.toml (edited since): remove it."""
        for name in self.names:
            if str(self._active(name)) == path:
                st = self.state()
                if st.trial is None or st.trial.name != name:
                    st.trial = Trial(name, st.applied.get(name, 0), None, 0, 0, [])
                return self._roll_back(st, str(err))
        return None

    def status(self) -> dict[str, Any]:
        st = self.state()
        return {"site": self.site, **asdict(st)}


def boot(config_path: Path) -> tuple[AgentConfig, list[UpdateResult]]:
    """agent.toml with its installed fragments, for ``agent run``: a trial seen at a second
    start is rolled back first, and a fragment the config now refuses is removed (the
    agent starts on its own file rather than not at all)."""
    base = load_config(config_path, fragments=False)
    if base.updates is None or not base.updates.fragments:
        return base, []
    frags = ConfigFragments.for_config(base, config_path, meta=Path())
    said = [r for r in (frags.on_boot(),) if r is not None]
    for _ in base.updates.fragments:  # each round removes at most one fragment
        try:
            return load_config(config_path), said
        except ConfigError as err:
            gone = frags.refuse_active(err.path, err)
            if gone is None:
                raise
            said.append(gone)
    return load_config(config_path), said
