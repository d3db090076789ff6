"""Alembic migrations of the node database (node tables and credit-chain tables).

They ship inside the package; :mod:`creditnet.store.schema` runs them, and
``python -m creditnet.store.migrations --url URL revision --autogenerate -m "..."``
drafts a new one from the models (review every draft by hand: migrations are
snapshots and must never import the models).
"""

__all__: list[str] = []
