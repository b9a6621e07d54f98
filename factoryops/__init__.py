"""factoryops: the one CLI (the composition root) that mounts each package's commands."""

__all__: list[str] = []
