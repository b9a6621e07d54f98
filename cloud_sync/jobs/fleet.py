"""Every job type of a FactoryOps hub: the built-in ones and the fleet ones.

- ``m2n2``: merge per-site autoencoders of one family (models_onnx/m2n2.py) and compare the
  merged model with the best single one and the plain average on held-out files; optionally
  publish it, calibrated for one channel, as a TUF update.
- ``rnd1.tune``: tune an M2N2 job's merged model for one site (span, limit factor) with
  Optuna, nested; optionally publish the tuned model.
- ``rnd1.setpoint``: least-power setpoint on a site's shadow twin under flow and
  cavitation-margin constraints; optionally publish it as an agent configuration fragment.
- ``publish``: publish a model file from the hub's data directory.

Data paths are relative to the hub's data directory (datasets under ``datasets/``); a path
that leaves it is refused at submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud_sync.jobs.types import JobContext, JobType, JobTypes, Runner, default_job_types

__all__ = ["M2N2Params", "PublishParams", "SetpointParams", "TuneParams", "fleet_job_types"]

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _relative(value: str) -> str:
    p = Path(value)
    if p.is_absolute() or ".." in p.parts or not value:
        raise ValueError(f"{value!r} must be a path inside the hub's data directory")
    return value


class _Publish(BaseModel):
    model_config = ConfigDict(extra="forbid")
    publish_channel: str | None = Field(default=None, pattern=_NAME)
    calibration_csv: str | None = None  # normal operation of the channel's site

    @field_validator("calibration_csv")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        return None if v is None else _relative(v)

    @model_validator(mode="after")
    def _both(self) -> _Publish:
        if self.publish_channel is not None and self.calibration_csv is None:
            raise ValueError("publish_channel needs calibration_csv (normal data of that site)")
        return self


class M2N2Params(_Publish):
    family: Literal["autoencoder"] = "autoencoder"
    sites: dict[str, str] = Field(min_length=2, max_length=64)  # name -> folder
    generations: int = Field(default=300, ge=1, le=100_000)
    archive_size: int = Field(default=8, ge=2, le=64)
    seed: int = Field(default=0, ge=0)

    @field_validator("sites")
    @classmethod
    def _folders(cls, v: dict[str, str]) -> dict[str, str]:
        return {name: _relative(folder) for name, folder in v.items()}


class TuneParams(_Publish):
    model_job: int = Field(ge=1)  # the m2n2 job whose merged model is tuned
    site: str = Field(pattern=_NAME)
    # the tuned span and limit as a signed fragment config/<site>/scoring.toml, for the
    # agents of that site running the m2n2 job's published model (ADR 0040)
    publish_config_site: str | None = Field(default=None, pattern=_NAME)
    n_trials: int = Field(default=40, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    study: str | None = Field(default=None, pattern=_NAME)


class SetpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sweep_csv: str
    min_flow_lpm: float = Field(gt=0, le=10_000)
    min_npsh_margin_m: float = Field(ge=0, le=100)
    n_trials: int = Field(default=60, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    study: str | None = Field(default=None, pattern=_NAME)
    publish_site: str | None = Field(default=None, pattern=_NAME)

    @field_validator("sweep_csv")
    @classmethod
    def _inside(cls, v: str) -> str:
        return _relative(v)


class PublishParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: str
    family: str = Field(pattern=_NAME)
    channel: str = Field(default="fleet", pattern=_NAME)

    @field_validator("manifest")
    @classmethod
    def _inside(cls, v: str) -> str:
        return _relative(v)


def _when_run(name: str) -> Runner:
    """The job ``name`` of ``cloud_sync.jobs.fleetwork``, imported when a job first runs:
    its models pull in onnxruntime, scikit-learn and SciPy, which a hub that only ingests
    never needs: imported with the app, they were 1.5 s of its 2.8 s import and 185 of an
    idle hub's 300 MiB resident (115 MiB without them)."""

    def run(ctx: JobContext, params: Any) -> Mapping[str, Any]:
        from cloud_sync.jobs import fleetwork  # noqa: PLC0415 - heavy, and only a running job needs it

        job: Runner = getattr(fleetwork, name)
        return job(ctx, params)

    return run


def fleet_job_types() -> JobTypes:
    return default_job_types().with_types(
        JobType(
            "m2n2", M2N2Params, _when_run("m2n2"), "merge per-site models (M2N2), compare, publish"
        ),
        JobType(
            "rnd1.tune", TuneParams, _when_run("tune"), "tune a merged model for a site (Optuna)"
        ),
        JobType(
            "rnd1.setpoint", SetpointParams, _when_run("setpoint"), "least-power setpoint on a twin"
        ),
        JobType("publish", PublishParams, _when_run("publish"), "publish a model as a TUF update"),
    )
