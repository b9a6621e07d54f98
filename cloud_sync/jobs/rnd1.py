"""RND1, the hub's optimisation engine (Optuna): per-site detector tuning and setpoint search
on a site's shadow twin. Studies live in the hub's database (Optuna's RDB storage), so a
study survives a worker restart and several workers can work one study.

- ``tune``: the alarm's EWMA span and the factor on its limit, for one model on one site,
  nested: trials are scored on the site's *selection* files, the chosen point is reported
  once on its *held-out* files (with the untuned default beside it), so no figure is
  tuned on the data it reports.
- ``setpoint``: least electrical power subject to a minimum flow and a minimum NPSH
  (cavitation) margin, on a shadow twin fitted to the site's logged operating points
  (cubic ridge regression per output; its fit is reported on logged points it did not
  see). Constraints are set on each trial (``Trial.set_constraint``, Optuna 5), so
  infeasible trials guide the TPE search without being chosen.

Optuna keeps its own Alembic ``alembic_version`` table, which would collide with the hub's:
on PostgreSQL its tables live in schema ``optuna`` of the same database; on SQLite in a
sibling file ``<hub db>.optuna.db`` (ADR 0022).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from numpy.typing import NDArray
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sqlalchemy.engine import make_url

from cloud_sync.jobs.types import JobError
from cloud_sync.storage.migrate import ensure_pg_schema
from models_onnx.m2n2 import M2N2Config, NetShape, Site, site_f1

__all__ = ["SetpointBounds", "optuna_storage_url", "setpoint_study", "tune_site"]

Progress = Callable[[int, int, float | None], None]  # done, total, best so far
SWEEP = ("valve", "speed", "power_w", "flow_lpm", "npsh_margin_m")


def optuna_storage_url(hub_db_url: str) -> str:
    """Where the hub's Optuna studies live (see the module docstring for why not in place)."""
    url = make_url(hub_db_url)
    if url.get_backend_name() == "postgresql":
        ensure_pg_schema(hub_db_url, "optuna")
        return url.update_query_dict({"options": "-csearch_path=optuna"}).render_as_string(
            hide_password=False
        )
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return url.set(database=f"{url.database}.optuna.db").render_as_string()
    raise JobError(f"no Optuna storage next to {url.render_as_string()}", hint="use a file DB")


@contextmanager
def _study(
    storage: str,
    name: str,
    direction: Literal["minimize", "maximize"],
    sampler: optuna.samplers.BaseSampler,
) -> Iterator[optuna.Study]:
    """The study (made, or loaded to continue); its database connections closed after."""
    optuna.logging.set_verbosity(logging.WARNING)
    rdb = optuna.storages.RDBStorage(storage)
    try:
        yield optuna.create_study(
            study_name=name, storage=rdb, direction=direction, sampler=sampler, load_if_exists=True
        )
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def _run(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    progress: Progress | None,
) -> None:
    """Run the trials still missing (a restarted worker continues a study, not redoes it)."""
    done = len([t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE])
    remaining = max(0, n_trials - done)

    def report(s: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            finished = len([t for t in s.trials if t.state is optuna.trial.TrialState.COMPLETE])
            try:
                best: float | None = s.best_value
            except ValueError:
                best = None
            progress(finished, n_trials, best)

    if remaining:
        study.optimize(objective, n_trials=remaining, callbacks=[report])


def _history(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "value": t.value,
            "params": t.params,
            **t.user_attrs,
            **({"constraints": list(t.constraints.values())} if t.constraints else {}),
        }
        for t in study.trials
        if t.state is optuna.trial.TrialState.COMPLETE
    ]


def tune_site(
    theta: NDArray[np.float64],
    site: Site,
    shape: NetShape,
    *,
    storage: str,
    study_name: str,
    n_trials: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    if not site.selection or not site.held_out:
        raise JobError(f"site {site.name} has no labelled selection or held-out files")
    base = M2N2Config()

    def objective(trial: optuna.Trial) -> float:
        span = trial.suggest_int("span", 1, 40)
        factor = trial.suggest_float("threshold_factor", 0.5, 4.0, log=True)
        return site_f1(theta, site.selection, shape, dataclasses.replace(base, span=span), factor)

    with _study(storage, study_name, "maximize", optuna.samplers.TPESampler(seed=seed)) as study:
        _run(study, objective, n_trials, progress)
        best, best_value, trials = study.best_params, study.best_value, _history(study)
    tuned = dataclasses.replace(base, span=int(best["span"]))
    return {
        "study": study_name,
        "site": site.name,
        "objective": "F1 on the site's selection files",
        "best": {**best, "selection_f1": best_value},
        "held_out_f1": site_f1(theta, site.held_out, shape, tuned, float(best["threshold_factor"])),
        "held_out_f1_untuned": site_f1(theta, site.held_out, shape, base),
        "trials": trials,
    }


@dataclass(frozen=True, slots=True)
class SetpointBounds:
    min_flow_lpm: float
    min_npsh_margin_m: float
    valve: tuple[float, float] = (0.2, 1.0)
    speed: tuple[float, float] = (0.5, 1.15)


def _read_sweep(path: Path) -> NDArray[np.float64]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
        cols = [rows[0].index(c) for c in SWEEP]
        data = np.array([[float(r[c]) for c in cols] for r in rows[1:]], dtype=np.float64)
    except (OSError, ValueError, IndexError) as err:
        raise JobError(f"{path}: not a setpoint log with columns {SWEEP} ({err})") from err
    if len(data) < 30:
        raise JobError(f"{path}: {len(data)} logged points; the twin needs 30 or more")
    return data


def _twin(x: NDArray[np.float64], y: NDArray[np.float64]) -> Any:
    return make_pipeline(StandardScaler(), PolynomialFeatures(3), Ridge(alpha=1e-3)).fit(x, y)


def setpoint_study(
    sweep: Path,
    bounds: SetpointBounds,
    *,
    storage: str,
    study_name: str,
    n_trials: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    data = _read_sweep(sweep)
    x, y = data[:, :2], data[:, 2:]
    cut = int(len(data) * 0.8)  # the twin's fit is judged on points it did not see
    check = _twin(x[:cut], y[:cut])
    err = np.abs(check.predict(x[cut:]) - y[cut:]) / np.maximum(np.abs(y[cut:]), 1e-9)
    twin = _twin(x, y)

    def objective(trial: optuna.Trial) -> float:
        valve = trial.suggest_float("valve", *bounds.valve)
        speed = trial.suggest_float("speed", *bounds.speed)
        power, flow, margin = (float(v) for v in twin.predict([[valve, speed]])[0])
        trial.set_user_attr("flow_lpm", flow)
        trial.set_user_attr("npsh_margin_m", margin)
        # Optuna 5: feasible when every constraint is <= 0; TPE uses them to guide the search
        trial.set_constraint("flow", bounds.min_flow_lpm - flow)
        trial.set_constraint("npsh_margin", bounds.min_npsh_margin_m - margin)
        return power

    with _study(storage, study_name, "minimize", optuna.samplers.TPESampler(seed=seed)) as study:
        _run(study, objective, n_trials, progress)
        trials = _history(study)
    feasible = [t for t in trials if max(t["constraints"]) <= 0]
    if not feasible:
        raise JobError(
            f"no feasible setpoint in {len(trials)} trials: flow >= {bounds.min_flow_lpm} l/min"
            f" and NPSH margin >= {bounds.min_npsh_margin_m} m cannot both hold on this twin"
        )
    best = min(feasible, key=lambda t: t["value"])
    return {
        "study": study_name,
        "objective": "least electrical power (W)",
        "constraints": dataclasses.asdict(bounds),
        "twin": {
            "points": len(data),
            "median_relative_error": dict(
                zip(SWEEP[2:], np.median(err, axis=0).round(4).tolist(), strict=True)
            ),
        },
        "best": {
            "power_w": best["value"],
            **best["params"],
            "flow_lpm": best["flow_lpm"],
            "npsh_margin_m": best["npsh_margin_m"],
            "trial": best["number"],
        },
        "feasible_trials": len(feasible),
        "trials": trials,
    }
