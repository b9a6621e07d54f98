"""The fleet jobs' work (``cloud_sync/jobs/fleet.py`` lists the job types and their
parameters): imported when a job first runs, since its models pull in onnxruntime,
scikit-learn and SciPy, which a hub that only ingests never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cloud_sync.jobs.fleet import M2N2Params, PublishParams, SetpointParams, TuneParams, _Publish
from cloud_sync.jobs.types import JobContext, JobError
from cloud_sync.updates.errors import UpdatesError
from models_onnx.errors import ModelError
from models_onnx.fleetdata import load_site
from models_onnx.fleetmodel import read_normal_csv, write_fleet_model
from models_onnx.m2n2 import (
    M2N2Config,
    NetShape,
    Site,
    calibrated_model,
    compare,
    merge,
    train_site_model,
)

__all__ = ["SIGNALS", "m2n2", "publish", "setpoint", "tune"]

SIGNALS = [  # the column order of every fleet model (SKAB's, which the plant shares)
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]


def _shape() -> NetShape:
    return NetShape(len(SIGNALS))


def _sites(ctx: JobContext, folders: dict[str, str]) -> list[Site]:
    out = []
    for name, folder in folders.items():
        path = ctx.data_dir / "datasets" / folder
        if not path.is_dir():
            raise JobError(f"site {name}: no folder {path}", hint="copy the site's CSVs there")
        try:
            out.append(load_site(name, path, SIGNALS))
        except ModelError as err:
            raise JobError(f"site {name}: {err}") from err
    return out


def _workdir(ctx: JobContext) -> Path:
    path = ctx.data_dir / "jobs" / str(ctx.job_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _publish(
    ctx: JobContext,
    theta: np.ndarray,
    p: _Publish,
    *,
    span: int,
    threshold: float,
    metrics: dict[str, Any],
) -> dict[str, Any] | None:
    if p.publish_channel is None or p.calibration_csv is None:
        return None
    from cloud_sync.updates.publish import publish_model  # noqa: PLC0415 - python-tuf on use
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    normal = read_normal_csv(ctx.data_dir / p.calibration_csv, SIGNALS)
    model = calibrated_model(theta, normal, _shape(), span=span)
    manifest = write_fleet_model(
        model, SIGNALS, _workdir(ctx), model_id=f"fleet-{p.publish_channel}-job{ctx.job_id}",
        normal=normal, span=span, threshold=threshold, metrics=metrics,
    )  # fmt: skip
    try:
        repo = TufRepository.open(ctx.data_dir / "tuf", ctx.data_dir / "tuf-keys")
        done = publish_model(
            repo, manifest, family="autoencoder", site=p.publish_channel, job_id=ctx.job_id
        )
    except UpdatesError as err:
        raise JobError(f"not published: {err}", hint=err.hint) from err
    ctx.log(f"published autoencoder/{p.publish_channel} version {done.version}")
    return done.as_json()


def m2n2(ctx: JobContext, p: M2N2Params) -> dict[str, Any]:
    shape, cfg = (
        _shape(),
        M2N2Config(archive_size=p.archive_size, generations=p.generations, seed=p.seed),
    )
    sites = _sites(ctx, p.sites)
    ctx.progress(0.0, f"training {len(sites)} site models")
    singles = {}
    for i, s in enumerate(sites):
        singles[s.name] = train_site_model(s, shape, seed=p.seed)
        ctx.progress(0.3 * (i + 1) / len(sites), f"site model {s.name}")
    every = max(1, p.generations // 100)

    def progress(gen: int, best: float) -> None:
        if gen % every == 0:
            ctx.progress(0.3 + 0.6 * gen / p.generations, f"generation {gen}, best {best:.4f}")

    result = merge(sites, list(singles.values()), shape, cfg, progress)
    ctx.progress(0.9, "held-out comparison")
    c = compare(sites, result.best, singles, shape, cfg)
    np.save(_workdir(ctx) / "merged.npy", result.best)
    ctx.log(
        f"merged {c.merged[0]:.4f}, best single {c.best_single[0]:.4f}, average {c.averaged[0]:.4f}"
    )
    out: dict[str, Any] = {
        **c.as_json(),
        "files": {s.name: [len(s.train), len(s.selection), len(s.held_out)] for s in sites},
        "sites": p.sites,
        "generations": p.generations,
        "children_accepted": result.accepted,
        "history": [round(h, 4) for h in result.history[:: max(1, len(result.history) // 200)]],
        "weights": f"jobs/{ctx.job_id}/merged.npy",
    }
    out["published"] = _publish(
        ctx, result.best, p, span=cfg.span, threshold=1.0, metrics={"m2n2_job": ctx.job_id}
    )
    return out


def _trials(ctx: JobContext) -> Callable[[int, int, float | None], None]:
    def report(done: int, total: int, best: float | None) -> None:
        ctx.progress(done / total, f"trial {done} of {total}, best {best}")

    return report


def _model_job(ctx: JobContext, job_id: int) -> np.ndarray:
    weights = ctx.data_dir / "jobs" / str(job_id) / "merged.npy"
    if not weights.exists():
        raise JobError(f"job {job_id} left no merged model ({weights})", hint="run an m2n2 job")
    merged: np.ndarray = np.load(weights)
    return merged


def tune(ctx: JobContext, p: TuneParams) -> dict[str, Any]:
    from cloud_sync.jobs.rnd1 import optuna_storage_url, tune_site  # noqa: PLC0415 - optuna

    theta = _model_job(ctx, p.model_job)
    site = _sites(ctx, {p.site: p.site})[0]
    if not any(e.labels.any() for e in (*site.selection, *site.held_out)):
        raise JobError(f"site {p.site} has no labelled anomalies to tune on")
    study = p.study or f"tune-job{p.model_job}-{p.site}"
    out = tune_site(
        theta, site, _shape(), storage=optuna_storage_url(ctx.db_url), study_name=study,
        n_trials=p.n_trials, seed=p.seed,
        progress=_trials(ctx),
    )  # fmt: skip
    best = out["best"]
    out["published"] = _publish(
        ctx, theta, p, span=int(best["span"]), threshold=float(best["threshold_factor"]),
        metrics={"m2n2_job": p.model_job, "rnd1_job": ctx.job_id, "tuned": best},
    )  # fmt: skip
    if p.publish_config_site is not None:
        fragment = _fragment(
            f"RND1 job {ctx.job_id}: span and limit tuned for site {p.site} on the merged"
            f" model of job {p.model_job} (selection F1 {best['selection_f1']:.3f})",
            "model",
            threshold_factor=f"{float(best['threshold_factor']):.4f}",
            smoothing_span=str(int(best["span"])),
        )
        out["published_config"] = _publish_fragment(ctx, fragment, p.publish_config_site, "scoring")
    return out


def _fragment(comment: str, table: str, **values: str) -> str:
    """An agent configuration fragment: a comment saying where it came from, one table."""
    return f"# {comment}\n[{table}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def _publish_fragment(ctx: JobContext, text: str, site: str, name: str) -> dict[str, Any]:
    from cloud_sync.updates.publish import publish_config  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    try:
        repo = TufRepository.open(ctx.data_dir / "tuf", ctx.data_dir / "tuf-keys")
        done = publish_config(repo, text, site=site, name=name, job_id=ctx.job_id)
    except UpdatesError as err:
        raise JobError(f"not published: {err}", hint=err.hint) from err
    ctx.log(f"published config/{site}/{name}.toml version {done.version}")
    return done.as_json()


def setpoint(ctx: JobContext, p: SetpointParams) -> dict[str, Any]:
    from cloud_sync.jobs.rnd1 import SetpointBounds, optuna_storage_url, setpoint_study  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    out = setpoint_study(
        ctx.data_dir / "datasets" / p.sweep_csv,
        SetpointBounds(p.min_flow_lpm, p.min_npsh_margin_m),
        storage=optuna_storage_url(ctx.db_url),
        study_name=p.study or f"setpoint-job{ctx.job_id}",
        n_trials=p.n_trials,
        seed=p.seed,
        progress=_trials(ctx),
    )
    if p.publish_site is not None:
        b = out["best"]
        fragment = _fragment(
            f"RND1 job {ctx.job_id}: least power with flow >= {p.min_flow_lpm} l/min and"
            f" NPSH margin >= {p.min_npsh_margin_m} m (shadow twin)",
            "setpoint",
            valve=f"{b['valve']:.4f}",
            speed=f"{b['speed']:.4f}",
            expected_power_w=f"{b['power_w']:.1f}",
            expected_flow_lpm=f"{b['flow_lpm']:.2f}",
        )
        out["published"] = _publish_fragment(ctx, fragment, p.publish_site, "setpoint")
    return out


def publish(ctx: JobContext, p: PublishParams) -> dict[str, Any]:
    from cloud_sync.updates.publish import publish_model  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    repo = TufRepository.open(ctx.data_dir / "tuf", ctx.data_dir / "tuf-keys")
    done = publish_model(
        repo, ctx.data_dir / p.manifest, family=p.family, site=p.channel, job_id=ctx.job_id
    )
    return done.as_json()
