"""Alembic environment: runs on the connection Casebook hands it (see casebook.db.Database.migrate)."""

from alembic import context

from casebook.models import Base

connection = context.config.attributes.get('connection')
if connection is None:
    raise RuntimeError('Casebook applies migrations itself on start: run `casebook serve` or `casebook migrate`.')

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
