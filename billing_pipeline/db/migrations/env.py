"""Alembic environment: the engine comes from the caller (billing_pipeline.db.engine)."""

from alembic import context

from billing_pipeline.db.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: BILLING_DATABASE_URL or the embedded default
    from billing_pipeline.config import database_url
    from billing_pipeline.db.engine import make_engine

    engine = make_engine(database_url())

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
