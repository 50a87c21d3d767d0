"""The durable store: SQLAlchemy 2 (async) on SQLite by default, PostgreSQL by URL."""
