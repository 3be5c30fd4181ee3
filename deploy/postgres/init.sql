-- Runs once, when the compose postgres container initialises an empty data volume
-- (/docker-entrypoint-initdb.d). The database and its owner `redline` come from POSTGRES_DB /
-- POSTGRES_USER; the schema itself is applied by `python -m deploy.migrate` (shared/store/migrations/,
-- numbered, under an advisory lock), never here, so upgrades take the same path as new installs.

-- Timestamps are stored as timestamptz; UTC sessions keep logs and ad-hoc queries unambiguous.
ALTER DATABASE redline SET timezone TO 'UTC';
-- A statement stuck behind a lock must not hold a flush (or a request) forever; the services
-- also set a client-side command timeout (REDLINE_DB_COMMAND_TIMEOUT_S).
ALTER DATABASE redline SET lock_timeout TO '10s';
ALTER DATABASE redline SET idle_in_transaction_session_timeout TO '60s';
-- Nobody but the owner creates objects in the public schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
