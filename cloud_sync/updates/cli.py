"""``factoryops hub tuf init|publish-model|publish-config|rotate-root|refresh``."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["tuf"]

_DATA = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("hub-data"),
    show_default=True,
    help="The hub's data directory (the repository is DATA_DIR/tuf, online keys tuf-keys/).",
)


@click.group()
def tuf() -> None:
    """The hub's TUF repository of models and agent configuration fragments."""


_HSM = (
    "The PKCS#11 URI of a token, without an object (keys tuf-* are made in it), e.g. "
    "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=tuf;pin-source=env:TUF_PIN"
)


@tuf.command()
@_DATA
@click.option(
    "--offline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the three root keys are written: removable media kept off the hub.",
)
@click.option("--root-hsm", default=None, help="Root keys in this token instead. " + _HSM)
@click.option("--online-hsm", default=None, help="Online keys in this token. " + _HSM)
def init(
    data_dir: Path, offline_dir: Path | None, root_hsm: str | None, online_hsm: str | None
) -> None:
    """Create the repository: 3 root keys (threshold 2) offline, online keys on the hub.

    Keys are Ed25519 files (0600) or live in PKCS#11 tokens (--root-hsm, --online-hsm),
    where they never leave the token.

    \b
    Examples:
      factoryops hub tuf init --data-dir hub-data --offline-dir /media/usb/tuf-root
      M=/usr/lib/softhsm/libsofthsm2.so
      factoryops hub tuf init --data-dir hub-data \\
          --root-hsm "pkcs11:module-path=$M;token=root;pin-source=env:ROOT_PIN" \\
          --online-hsm "pkcs11:module-path=$M;token=hub;pin-source=env:HUB_PIN"
      # give each agent hub-data/tuf/metadata/1.root.json at enrollment
    """
    from cloud_sync.updates.repository import init_repository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if (offline_dir is None) == (root_hsm is None):
        raise click.UsageError("give --offline-dir or --root-hsm (where the root keys go)")
    root = init_repository(
        data_dir / "tuf", offline_dir, data_dir / "tuf-keys", root_hsm=root_hsm,
        online_hsm=online_hsm,
    )  # fmt: skip
    click.echo(f"TUF repository in {data_dir / 'tuf'}; agents trust {root}")
    if root_hsm is not None:
        click.echo("root keys (threshold 2 of 3) in PKCS#11 token: tuf-root-1..3")
    else:
        click.echo(f"root keys (threshold 2 of 3) in {offline_dir}: take them off this machine")


@tuf.command("publish-model")
@_DATA
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--family", required=True, help="Model family (the manifest's kind).")
@click.option("--site", default="fleet", show_default=True, help="Channel: a site or fleet.")
@click.option("--job", "job_id", type=int, default=None, help="The job that produced it.")
def publish_model_cmd(
    data_dir: Path, manifest: Path, family: str, site: str, job_id: int | None
) -> None:
    """Publish a model (manifest + ONNX) as the next version of FAMILY/SITE.

    \b
    Example:
      factoryops hub tuf publish-model models/ae.manifest.json --family autoencoder
    """
    from cloud_sync.updates.publish import publish_model  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    repo = TufRepository.open(data_dir / "tuf", data_dir / "tuf-keys")
    p = publish_model(repo, manifest, family=family, site=site, job_id=job_id)
    click.echo(f"published {family}/{site} version {p.version} (targets {p.targets_version})")


@tuf.command("publish-config")
@_DATA
@click.argument("fragment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--site", required=True, help="The site whose agents take the fragment.")
@click.option("--name", default=None, help="Fragment name (default: the file's stem).")
def publish_config_cmd(data_dir: Path, fragment: Path, site: str, name: str | None) -> None:
    """Publish an agent configuration fragment (TOML) for a site.

    \b
    Example:
      factoryops hub tuf publish-config thresholds.toml --site plant-1
    """
    from cloud_sync.updates.publish import publish_config  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    repo = TufRepository.open(data_dir / "tuf", data_dir / "tuf-keys")
    text = fragment.read_text(encoding="utf-8")
    p = publish_config(repo, text, site=site, name=name or fragment.stem, job_id=None)
    click.echo(f"published {p.paths[0]} version {p.version}")


@tuf.command("rotate-root")
@_DATA
@click.option(
    "--old-key",
    "old_keys",
    multiple=True,
    required=True,
    help="A current root key: a PEM file or a pkcs11: URI with its object (the threshold).",
)
@click.option(
    "--new-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the three new root keys are written (offline).",
)
@click.option("--new-hsm", default=None, help="The new root keys in this token. " + _HSM)
def rotate_root(
    data_dir: Path, old_keys: tuple[str, ...], new_dir: Path | None, new_hsm: str | None
) -> None:
    """Replace the root keys: root N+1 signed by the old and the new threshold.

    \b
    Example:
      factoryops hub tuf rotate-root --old-key /media/usb/root-1.pem \\
          --old-key /media/usb/root-2.pem --new-dir /media/usb2/tuf-root
    """
    from cloud_sync.updates.keys import load_key, new_key, token_uri  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.updates.repository import ROOT_KEYS, TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if (new_dir is None) == (new_hsm is None):
        raise click.UsageError("give --new-dir or --new-hsm (where the new root keys go)")
    repo = TufRepository.open(data_dir / "tuf", data_dir / "tuf-keys")
    old = [load_key(k if k.startswith("pkcs11:") else Path(k)) for k in old_keys]
    version = repo.root_version() + 1
    new = [
        new_key(token_uri(new_hsm, f"tuf-root-v{version}-{i + 1}"))
        if new_hsm is not None
        else new_key((new_dir or Path()) / f"root-{i + 1}.pem")
        for i in range(ROOT_KEYS)
    ]
    click.echo(f"root version {repo.rotate_root(old, new)}; new keys in {new_hsm or new_dir}")


@tuf.command()
@_DATA
def refresh(data_dir: Path) -> None:
    """Re-sign timestamp and snapshot now (the hub also does it when serving them)."""
    from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    TufRepository.open(data_dir / "tuf", data_dir / "tuf-keys").refresh(force=True)
    click.echo("timestamp and snapshot re-signed")
