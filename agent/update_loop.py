"""The update client as a task of ``agent run``: every ``[updates] interval_s`` it checks the
hub's TUF repository for a new model and new configuration fragments; after failed checks
it backs off (full jitter, up to ``max_backoff_s``); it never holds up acquisition.

Each check runs in a worker thread of its own (python-tuf, HTTP, ONNX health checks):
the runtime's queues, spool thread and signer are not touched. A new model reaches the
runtime the way it always has, through the ``[model] manifest`` symlink its watcher
follows; new scoring settings through ``retune``. Any error of a check is logged and
counted, never raised: a broken update path must not stop the agent (ADR 0040).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.config import AgentConfig, ScoringConfig, UpdatesConfig
from agent.fragments import ConfigFragments
from agent.health import STATUS_FILE, HealthLimits, read_status
from agent.spoolread import recent_readings
from agent.updates import ModelUpdates, UpdateResult
from models_onnx.manifest import LoadedModel

__all__ = ["FAILED", "Tunable", "UpdateLoop", "next_delay", "update_loop"]

log = logging.getLogger(__name__)

# outcomes after which the next check backs off: the hub did not answer, or answered with
# something refused (an attack or a broken repository is not fixed by asking again soon)
FAILED = frozenset({"unreachable", "refused", "error"})


class Tunable(Protocol):
    """The running scorer as the update client sees it (``agent.inference.OnnxScorer``)."""

    model: LoadedModel
    scoring: ScoringConfig

    def retune(self, scoring: ScoringConfig) -> None: ...


def next_delay(failures: int, cfg: UpdatesConfig, rng: random.Random) -> float:
    """Seconds to the next check: the interval while checks succeed; after ``failures``
    failed ones in a row, a full-jitter draw under min(max_backoff_s, interval * 2^n)."""
    if failures <= 0:
        return float(cfg.interval_s)
    backoff = Backoff(base_s=float(cfg.interval_s), cap_s=float(cfg.max_backoff_s))
    return max(1.0, backoff.delay(failures, rng))


@dataclass
class UpdateLoop:
    config: UpdatesConfig
    models: ModelUpdates
    fragments: ConfigFragments | None
    spool: Path  # the agent's spool: its newest readings feed the health checks
    status_path: Path  # the agent's status file: its health while a fragment is on trial
    scorer: Tunable | None = None
    clock: Callable[[], int] = time.time_ns
    rng: random.Random = field(default_factory=random.Random)
    on_result: Callable[[UpdateResult], None] | None = None  # the demo prints them
    failures: int = 0
    checks: int = 0
    _status: dict[str, Any] = field(default_factory=dict)

    async def run(self) -> None:
        """Check, wait, check again, until cancelled."""
        while True:
            delay = await asyncio.to_thread(self.check_once)
            await asyncio.sleep(delay)

    def check_once(self) -> float:
        """One round (in a worker thread); the seconds to wait before the next."""
        now = self.clock()
        results: list[UpdateResult] = []
        try:
            results = self._round(now)
        except Exception as err:  # a bug or a broken state file must not stop the agent
            log.exception("update check failed")
            results = [UpdateResult("error", f"{type(err).__name__}: {err}", None)]
        failed = any(r.outcome in FAILED for r in results)
        self.failures = self.failures + 1 if failed else 0
        self.checks += 1
        delay = next_delay(self.failures, self.config, self.rng)
        if self.fragments is not None and (trial := self.fragments.state().trial) is not None:
            left = (trial.since_ns - now) / 1e9 + self.fragments.probation_s
            delay = min(delay, max(1.0, left))  # wake when its probation ends
        for r in results:
            if r.outcome not in ("none", "current", "waiting") and self.on_result is not None:
                self.on_result(r)
        self._status = self._snapshot(now, delay, results)
        return delay

    def _round(self, now: int) -> list[UpdateResult]:
        doc, verdict = read_status(self.status_path, now, HealthLimits())
        windows = int(doc.get("windows_signed", 0)) if doc else 0
        written = int(doc.get("written_ns", 0)) if doc else 0
        problems = list(verdict.problems) if verdict.running else [verdict.why_not_running]
        results: list[UpdateResult] = []
        if self.fragments is not None:  # (1) a fragment whose probation is over
            settled, back = self.fragments.settle(windows, problems, written)
            if settled is not None:
                results.append(settled)
            self._apply(back)
        live = recent_readings(self.spool)
        if self.scorer is not None:
            self.models.scoring = self.scorer.scoring
        results.append(self.models.check(live))  # (2) the model channel
        if self.fragments is not None and self.scorer is not None:  # (3) fragments
            got, new = self.fragments.check(
                live, self.scorer.model, self.scorer.scoring, windows, problems, now
            )
            results += got
            self._apply(new)
        return results

    def _apply(self, scoring: ScoringConfig | None) -> None:
        if scoring is not None and self.scorer is not None:
            self.scorer.retune(scoring)
            log.info("scoring settings now %s", scoring)

    def _snapshot(self, now: int, delay: float, results: list[UpdateResult]) -> dict[str, Any]:
        st = self.models.state()
        return {
            "channel": f"{self.models.family}/{self.models.site}",
            "running": st.running,
            "available": st.available,
            "rejected": st.rejected,
            "checks": self.checks,
            "failures": self.failures,
            "last_check_ns": now,
            "next_check_ns": now + int(delay * 1e9),
            "last": [f"{r.outcome}: {r.detail}" for r in results],
            "config": self.fragments.status() if self.fragments else None,
        }

    def status(self) -> dict[str, Any] | None:
        """For the agent's status file (``agent status``); None before the first check."""
        return self._status or None


def update_loop(cfg: AgentConfig, config_path: Path, scorer: Tunable | None) -> UpdateLoop | None:
    """The update task a config asks for (``[updates]``), or None."""
    u = cfg.updates
    if u is None or cfg.model_manifest is None or cfg.hub.url is None:
        return None
    models = ModelUpdates(
        cfg.spool.path.parent / "updates" / u.family / u.channel,
        f"{cfg.hub.url}/tuf",
        u.family,
        u.channel,
        cfg.model_manifest,
        scoring=cfg.scoring,
    )
    fragments = None
    if u.fragments:
        fragments = ConfigFragments.for_config(cfg, config_path, models.state_dir / "tuf")
    status_path = cfg.spool.path.with_name(STATUS_FILE)
    return UpdateLoop(u, models, fragments, cfg.spool.path, status_path, scorer)
