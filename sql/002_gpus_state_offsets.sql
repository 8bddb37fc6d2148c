-- 002: the processor's bookkeeping tables (plain tables, one row per key, updated in place).
--
-- gpus            grain: one row per physical GPU ever seen.
--   gpu_uuid PK, cluster, host (last seen; the host label can change, never key on it),
--   gpu_index, gpu_model, total_slices (compute slices: 7, or 4 on A30), mig_enabled (last),
--   first_seen / last_seen (snapshot ts).
-- gpu_state       grain: one row per GPU; the processor's memory between batches.
--   gpu_uuid PK, last_ts (ts of the newest merged snapshot: anything not newer is a
--   duplicate), mig_enabled, layout jsonb (the last layout: {"<gi_id>": {profile, slices,
--   namespace, pod, container}}), source_partition/source_offset of that snapshot, updated_at.
-- sink_offsets    grain: one row per (consumer_group, topic, partition).
--   next_offset = the next Kafka offset to consume; the processor seeks here on start and on
--   every assignment, and advances it with a compare-and-set in the same transaction as the
--   data it covers. Cumulative counts make every consumed record reconcilable:
--   records consumed = snapshots (merged) + duplicates + dead_letters.
-- dead_letters    grain: one row per rejected Kafka record (topic, partition, offset PK),
--   written in the same transaction as the offsets that pass it, so the table is an
--   exactly-once record of what was rejected (the dead-letter TOPIC is the at-least-once
--   notification). payload is truncated to a few KiB; payload_bytes is the original size.

CREATE TABLE gpus (
    gpu_uuid      text        PRIMARY KEY,
    cluster       text        NOT NULL,
    host          text        NOT NULL,
    gpu_index     integer     NOT NULL,
    gpu_model     text        NOT NULL,
    total_slices  smallint    NOT NULL,
    mig_enabled   boolean     NOT NULL,
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL
);
CREATE INDEX gpus_cluster_idx ON gpus (cluster, gpu_model);

CREATE TABLE gpu_state (
    gpu_uuid          text        PRIMARY KEY,
    last_ts           timestamptz NOT NULL,
    mig_enabled       boolean     NOT NULL,
    layout            jsonb       NOT NULL,
    source_partition  integer,
    source_offset     bigint,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sink_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    snapshots       bigint      NOT NULL DEFAULT 0,
    duplicates      bigint      NOT NULL DEFAULT 0,
    dead_letters    bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE dead_letters (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    consumer_group  text        NOT NULL,
    reason          text        NOT NULL,
    key             bytea,
    payload         bytea,
    payload_bytes   integer     NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON gpus, gpu_state, sink_offsets, dead_letters TO migmeter_writer;
REVOKE ALL ON gpus, gpu_state, sink_offsets, dead_letters FROM migmeter_reader;
