"""Alembic environment: runs on the connection Casebook hands it (see casebook.db.Database.migrate)."""

from alembic import context

from casebook.models import Base
from casebook.services.search import alembic_include_name

connection = context.config.attributes.get('connection')
if connection is None:
    raise RuntimeError('Casebook applies migrations itself on start: run `casebook serve` or `casebook migrate`.')


context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, include_name=alembic_include_name
)
with context.begin_transaction():
    context.run_migrations()
