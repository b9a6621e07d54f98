"""``python -m factoryops``: the same CLI as the ``factoryops`` console script."""

from factoryops.cli import main

main()
