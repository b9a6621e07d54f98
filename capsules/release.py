"""Capsules as TUF targets of the hub's repository (ADR 0021's, built by the fleet work).

``publish_capsule`` adds the capsule's bundle as ``capsules/<name>/<version>.capsule.json``
and a pointer ``capsules/<name>/latest.json`` in one targets version, so a site always sees a
complete release; ``fetch_capsule`` refreshes the metadata with ``tuf.ngclient.Updater``
against the root the site trusts, downloads pointer and bundle (each checked against its
signed length and hashes by ngclient), then opens the bundle and checks the capsule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater

from capsules.bundle import Ed25519Signing, make_bundle, open_bundle
from capsules.errors import BundleInvalid, CapsuleError
from capsules.spec import Capsule
from cloud_sync.updates.repository import NewTarget, TufRepository

__all__ = ["Fetched", "fetch_capsule", "latest_pointer", "publish_capsule"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def latest_pointer(name: str) -> str:
    return f"capsules/{name}/latest.json"


def _bundle_path(name: str, version: str) -> str:
    return f"capsules/{name}/{version}.capsule.json"


def publish_capsule(repo: TufRepository, cap: Capsule, folder: Path, signer: Ed25519Signing) -> int:
    """Publish bundle and pointer in one targets version; returns that version."""
    path = _bundle_path(cap.name, cap.version)
    known = repo.targets().signed.targets.get(path)
    bundle = make_bundle(cap, folder, signer)
    if known is not None:
        raise CapsuleError(
            f"{cap.name} {cap.version} is already published",
            hint="a release is immutable: raise [capsule] version and publish again",
        )
    custom = {
        "kind": "capsule",
        "name": cap.name,
        "version": cap.version,
        "area": cap.area,
        "capsule_sha256": cap.digest,
    }
    pointer = json.dumps({"path": path, **custom}, sort_keys=True).encode()
    return repo.publish(
        [NewTarget(path, bundle, custom), NewTarget(latest_pointer(cap.name), pointer, custom)]
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    capsule: Capsule
    files: dict[str, bytes]
    target: str


def fetch_capsule(hub_url: str, metadata_dir: Path, name: str, work: Path) -> Fetched:
    """The newest published release of ``name``, verified by TUF from ``metadata_dir``
    (which holds the trusted ``root.json``) and then checked as a capsule."""
    if not _NAME.match(name):
        raise CapsuleError(f"{name!r} is not a capsule name")
    if not (metadata_dir / "root.json").exists():
        raise CapsuleError(
            f"no trusted TUF root in {metadata_dir}",
            hint="copy the hub's tuf/metadata/1.root.json there as root.json",
        )
    work.mkdir(parents=True, exist_ok=True)
    base = hub_url.rstrip("/")
    updater = Updater(
        str(metadata_dir),
        f"{base}/tuf/metadata/",
        str(work),
        f"{base}/tuf/targets/",
        bootstrap=None,  # the trusted root in metadata_dir, as rotated since
    )
    try:
        updater.refresh()
        info = updater.get_targetinfo(latest_pointer(name))
        if info is None:
            raise CapsuleError(f"the hub publishes no capsule {name!r}")
        pointer = json.loads(Path(updater.download_target(info)).read_bytes())
        target = str(pointer["path"])
        bundle_info = updater.get_targetinfo(target)
        if bundle_info is None:
            raise CapsuleError(f"the pointer of {name} names {target}, which is not a target")
        data = Path(updater.download_target(bundle_info)).read_bytes()
    except tuf_errors.RepositoryError as err:  # every TUF attack ends here, before our code
        raise BundleInvalid(f"TUF refused the update of {name}: {err}") from err
    except (tuf_errors.DownloadError, OSError, ValueError, KeyError) as err:
        raise CapsuleError(f"cannot fetch {name} from {hub_url}: {err}") from err
    cap, files = open_bundle(data)
    if (cap.name, cap.version) != (name, pointer.get("version")):
        raise BundleInvalid(f"the bundle holds {cap.name} {cap.version}, not what {target} says")
    return Fetched(cap, files, target)
