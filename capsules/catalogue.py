"""The catalogue on disk: one folder per capsule under ``capsules/catalogue/``, and the files.

``load`` reads and fully checks one capsule (``spec.parse_capsule`` plus the agent's own
parser over the rendered agent.toml); ``apply`` writes a site's files only after every check
has passed, each atomically, so a refused capsule writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.config import parse_config
from agent.errors import ConfigError
from attestation.durable import write_atomically
from capsules.errors import CapsuleInvalid, UnknownCapsule
from capsules.render import Endpoints, job_policy, render_agent_toml, report_template
from capsules.spec import Capsule, parse_capsule

__all__ = ["CATALOGUE", "Applied", "apply", "catalogue", "find", "load"]

CATALOGUE = Path(__file__).resolve().parent / "catalogue"
MAX_CAPSULE_BYTES = 256 * 1024  # the largest capsule.toml is ~15 KiB; this bounds a hostile one


def _file(path: Path) -> Path:
    return path / "capsule.toml" if path.is_dir() else path


def load(path: Path) -> Capsule:
    """Read, parse and check one capsule (a folder or its ``capsule.toml``)."""
    file = _file(path)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_CAPSULE_BYTES + 1)
    except OSError as err:
        raise CapsuleInvalid(str(file), "<file>", None, f"cannot read: {err.strerror}") from err
    if len(data) > MAX_CAPSULE_BYTES:
        raise CapsuleInvalid(str(file), "<file>", None, f"larger than {MAX_CAPSULE_BYTES} bytes")
    cap = parse_capsule(data, str(file))
    _check_renders(cap)
    return cap


def _check_renders(cap: Capsule) -> None:
    """The connector templates must make a config the agent itself accepts."""
    text = render_agent_toml(cap, Endpoints(hub_url="http://127.0.0.1:8080"))
    try:
        parse_config(text, f"{cap.source} (rendered agent.toml)", base_dir=Path("."))
    except ConfigError as err:
        raise CapsuleInvalid(cap.source, "connector", None, f"the agent refuses it: {err}") from err


def catalogue(root: Path = CATALOGUE) -> list[Capsule]:
    """Every capsule of the catalogue, by area; the first invalid one raises."""
    caps = [load(d) for d in sorted(root.iterdir()) if (d / "capsule.toml").is_file()]
    return sorted(caps, key=lambda c: (c.area, c.name))


def find(name: str, root: Path = CATALOGUE) -> Capsule:
    folder = root / name
    if not (folder / "capsule.toml").is_file():
        known = sorted(d.name for d in root.iterdir() if (d / "capsule.toml").is_file())
        raise UnknownCapsule(name, known)
    return load(folder)


@dataclass(frozen=True, slots=True)
class Applied:
    agent_toml: Path
    job_policy: Path
    report_template: Path


def apply(cap: Capsule, out: Path, where: Endpoints) -> Applied:
    """Write agent.toml, hub-jobs.json and report-template.json into ``out``.

    Everything is rendered and the agent.toml parsed before the first byte is written.
    """
    agent_text = render_agent_toml(cap, where)
    try:
        parse_config(agent_text, str(out / "agent.toml"), base_dir=out)
    except ConfigError as err:
        raise CapsuleInvalid(cap.source, "connector", None, f"the agent refuses it: {err}") from err
    files = {
        "agent.toml": agent_text.encode(),
        "hub-jobs.json": (json.dumps(job_policy(cap), indent=2) + "\n").encode(),
        "report-template.json": (json.dumps(report_template(cap), indent=2) + "\n").encode(),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomically(out / name, data)
    return Applied(out / "agent.toml", out / "hub-jobs.json", out / "report-template.json")
