"""Alembic's environment: migrations always run on the connection the store hands over.

The store opens the transaction and takes its lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL) before Alembic reads the current revision, so two processes opening a new store at once migrate it
once.  Run by :func:`llm_flywheel.store.engine.migrate`, never from the ``alembic`` command line against a live store
without that lock.
"""

from alembic import context

from llm_flywheel.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
