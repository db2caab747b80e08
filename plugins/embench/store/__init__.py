"""The results store: SQLAlchemy models (models), engine and migrations (db), idempotent
ingest (ingest), history queries (queries) and regression verdicts (detect). PostgreSQL in
deployments; an SQLite file in the data dir when EMBENCH_DB_URL is unset."""
