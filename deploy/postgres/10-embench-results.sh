#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialised (/docker-entrypoint-initdb.d):
# the results database `embench` with its owner (the pipeline writes and migrates it) and a
# read-only role for the UI. Passwords come from the environment (.env), never from here.
set -euo pipefail
: "${EMBENCH_DB_PASSWORD:?EMBENCH_DB_PASSWORD must be set}"
: "${EMBENCH_READER_PASSWORD:?EMBENCH_READER_PASSWORD must be set}"
EMBENCH_DB_USER="${EMBENCH_DB_USER:-embench}"
EMBENCH_DB_NAME="${EMBENCH_DB_NAME:-embench}"
EMBENCH_READER_USER="${EMBENCH_READER_USER:-embench_reader}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set owner="$EMBENCH_DB_USER" --set owner_pw="$EMBENCH_DB_PASSWORD" \
    --set reader="$EMBENCH_READER_USER" --set reader_pw="$EMBENCH_READER_PASSWORD" \
    --set db="$EMBENCH_DB_NAME" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_pw';
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_pw';
CREATE DATABASE :"db" OWNER :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"owner";
GRANT CONNECT ON DATABASE :"db" TO :"reader";
SQL

# Inside the results database: the reader may read every table the owner creates (the
# pipeline's migrations run later, as the owner), and nothing else.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$EMBENCH_DB_NAME" \
    --set owner="$EMBENCH_DB_USER" --set reader="$EMBENCH_READER_USER" <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON SEQUENCES TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
SQL
echo "[embench] results database $EMBENCH_DB_NAME (owner $EMBENCH_DB_USER, read-only $EMBENCH_READER_USER) created"
