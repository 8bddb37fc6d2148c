-- 001: TimescaleDB and the two group roles of the warehouse.
--
-- migmeter_writer (NOLOGIN): the processor's deployment login role is granted this role.
--   It gets SELECT/INSERT/UPDATE/DELETE on the processor's tables (granted by each migration
--   that creates them) and nothing else: it owns no table, so it cannot ALTER or DROP one,
--   and it runs no DDL except the TEMP staging tables every role may create.
-- migmeter_reader (NOLOGIN): for BI tools. SELECT on views only. It is never granted the
--   bookkeeping tables (sink_offsets, gpu_state, dead_letters) nor the raw usage tables
--   unless a later migration says so explicitly.
--
-- Roles are cluster-wide while migrations run per database, and several databases (tests,
-- sites) may be migrated at the same moment: creation is idempotent and tolerates the race
-- where another session creates the role between our check and our CREATE.

CREATE EXTENSION IF NOT EXISTS timescaledb;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'migmeter_writer') THEN
        BEGIN
            CREATE ROLE migmeter_writer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created concurrently by another migration run
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'migmeter_reader') THEN
        BEGIN
            CREATE ROLE migmeter_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO migmeter_writer, migmeter_reader;
