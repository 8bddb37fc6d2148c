-- 006: MIG layout history, derived by diffing consecutive snapshots of the same GPU.
--
-- layout_events   hypertable on ts (30-day chunks). Grain: one row per change observed.
--   ts = ts of the first snapshot showing the change; gpu_uuid, cluster;
--   event ∈ created | destroyed | profile_changed | tenant_changed | mig_enabled | mig_disabled;
--   gi_id (NULL for mig_enabled / mig_disabled, which concern the whole GPU);
--   before / after jsonb: the instance ({gi_id, profile, slices, namespace, pod, container})
--   before and after the change (NULL before for created, NULL after for destroyed; for
--   mig_* events the whole layout {"mig_enabled": b, "instances": [...]});
--   source_partition / source_offset: the Kafka record that revealed the change.
--   The first snapshot of a GPU establishes its layout and produces no events.
--
-- instance_intervals  plain table (rows are closed in place). Grain: one row per period in
--   which an instance had one profile and one tenant. Key (gpu_uuid, gi_id, valid_from).
--   gpu_uuid, gi_id, cluster, profile, slices, total_slices, namespace, pod, container,
--   valid_from (ts of the first snapshot showing it), valid_to (ts of the first snapshot
--   no longer showing it as such; NULL = still open). An interval is closed on destroy,
--   profile change, tenant change and MIG mode change, and a new one opened where the
--   instance goes on. As-of query: valid_from <= t AND (valid_to IS NULL OR t < valid_to).

CREATE TABLE layout_events (
    ts                timestamptz NOT NULL,
    gpu_uuid          text        NOT NULL,
    cluster           text        NOT NULL,
    event             text        NOT NULL CHECK (event IN ('created', 'destroyed', 'profile_changed',
                                                            'tenant_changed', 'mig_enabled', 'mig_disabled')),
    gi_id             integer,
    before            jsonb,
    after             jsonb,
    source_partition  integer,
    source_offset     bigint
);
SELECT create_hypertable('layout_events', 'ts', chunk_time_interval => INTERVAL '30 days');
CREATE INDEX layout_events_gpu_idx ON layout_events (gpu_uuid, ts DESC);
CREATE INDEX layout_events_event_idx ON layout_events (event, ts DESC);

CREATE TABLE instance_intervals (
    gpu_uuid      text        NOT NULL,
    gi_id         integer     NOT NULL,
    cluster       text        NOT NULL,
    profile       text        NOT NULL,
    slices        smallint    NOT NULL,
    total_slices  smallint    NOT NULL,
    namespace     text        NOT NULL,
    pod           text        NOT NULL,
    container     text        NOT NULL,
    valid_from    timestamptz NOT NULL,
    valid_to      timestamptz,
    PRIMARY KEY (gpu_uuid, gi_id, valid_from),
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
-- At most one open interval per instance: the processor closes before it opens.
CREATE UNIQUE INDEX instance_intervals_open_idx ON instance_intervals (gpu_uuid, gi_id) WHERE valid_to IS NULL;
CREATE INDEX instance_intervals_tenant_idx ON instance_intervals (namespace, pod, valid_from);
CREATE INDEX instance_intervals_time_idx ON instance_intervals (valid_from, valid_to);

GRANT SELECT, INSERT, UPDATE, DELETE ON layout_events, instance_intervals TO migmeter_writer;
