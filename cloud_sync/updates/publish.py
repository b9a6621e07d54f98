"""What the hub publishes to gateways: a model (ONNX + manifest) or an agent configuration
fragment, as TUF targets with custom metadata (kind, family, site, version, job).

A model of family F for site S, version N, is three targets in one targets version:
``models/F/S/N/model.onnx``, ``models/F/S/N/manifest.json`` (its ``fleet_version`` and
``job_id`` set, so the agent's micro-proofs carry them) and the pointer
``models/F/S/latest.json`` naming the other two. A model whose file does not hash to its
manifest, or whose kind is not F, is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_sync.updates.errors import PublishRefused
from cloud_sync.updates.repository import NewTarget, TufRepository

__all__ = ["Published", "latest_path", "publish_config", "publish_model"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_CONFIG_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class Published:
    family: str
    site: str
    version: int
    targets_version: int
    paths: tuple[str, ...]
    sha256: str  # of the ONNX file (or of the fragment)

    def as_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "site": self.site,
            "version": self.version,
            "targets_version": self.targets_version,
            "paths": list(self.paths),
            "sha256": self.sha256,
        }


def latest_path(family: str, site: str) -> str:
    return f"models/{family}/{site}/latest.json"


def _name(value: str, field: str) -> str:
    if not _NAME.match(value):
        raise PublishRefused(f"{field} {value!r}: letters, digits, '_', '.', '-' (1-64)")
    return value


def _next_version(repo: TufRepository, pointer: str) -> int:
    info = repo.targets().signed.targets.get(pointer)
    custom = info.custom if info is not None else None
    return int(custom["version"]) + 1 if isinstance(custom, dict) else 1


def publish_model(
    repo: TufRepository, manifest_path: Path, *, family: str, site: str, job_id: int | None
) -> Published:
    _name(family, "family")
    _name(site, "site")
    try:
        doc: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        onnx = (manifest_path.parent / str(doc["onnx_file"])).read_bytes()
    except (OSError, ValueError, KeyError) as err:
        raise PublishRefused(f"{manifest_path}: not a readable model manifest ({err})") from err
    digest = hashlib.sha256(onnx).hexdigest()
    if doc.get("sha256") != digest:
        raise PublishRefused(
            f"{manifest_path}: the ONNX file hashes to {digest}, the manifest says"
            f" {doc.get('sha256')}",
            hint="rebuild the model; nothing was published",
        )
    if doc.get("kind") != family:
        raise PublishRefused(
            f"{manifest_path}: a {doc.get('kind')!r} model cannot be published as family"
            f" {family!r}",
            hint="publish it under its own family",
        )
    pointer = latest_path(family, site)
    version = _next_version(repo, pointer)
    base = f"models/{family}/{site}/{version}"
    doc.update(onnx_file="model.onnx", fleet_version=version, job_id=job_id)
    custom = {"family": family, "site": site, "version": version, "job": job_id}
    latest = {"version": version, "manifest": f"{base}/manifest.json", "onnx": f"{base}/model.onnx"}
    items = [
        NewTarget(f"{base}/model.onnx", onnx, {**custom, "kind": "onnx"}),
        NewTarget(
            f"{base}/manifest.json",
            (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(),
            {**custom, "kind": "manifest"},
        ),
        NewTarget(
            pointer, json.dumps({**latest, "job": job_id}).encode(), {**custom, "kind": "latest"}
        ),
    ]
    tv = repo.publish(items)
    return Published(family, site, version, tv, tuple(i.path for i in items), digest)


def publish_config(
    repo: TufRepository, text: str, *, site: str, name: str, job_id: int | None
) -> Published:
    """An agent configuration fragment (TOML) for ``site``: ``config/<site>/<name>.toml``."""
    _name(site, "site")
    _name(name, "name")
    data = text.encode()
    if len(data) > MAX_CONFIG_BYTES:
        raise PublishRefused(f"fragment of {len(data)} bytes, limit {MAX_CONFIG_BYTES}")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PublishRefused(f"fragment {name!r} is not TOML: {err}") from err
    path = f"config/{site}/{name}.toml"
    info = repo.targets().signed.targets.get(path)
    version = int(info.custom["version"]) + 1 if info is not None and info.custom else 1
    custom = {"kind": "config", "site": site, "version": version, "job": job_id}
    tv = repo.publish([NewTarget(path, data, custom)])
    return Published("config", site, version, tv, (path,), hashlib.sha256(data).hexdigest())
