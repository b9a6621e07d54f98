"""Alembic environment: the hub runs migrations itself (``cloud_sync.storage.migrate``).

It hands over an open connection in ``config.attributes["connection"]``; there is no
alembic.ini and no URL here. Developers make a new revision with
``uv run python -m cloud_sync.storage.migrate revision -m "what changed"``.
"""

from __future__ import annotations

from alembic import context

from cloud_sync.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
