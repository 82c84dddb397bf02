-- kick-monitor schema, version 1.
-- Contract: operators query these tables and views with psql. Columns may be added, never renamed.

-- Streamers we watch, and their current status. Only kick-writer changes the status columns.
CREATE TABLE streamers (
    id                   bigserial PRIMARY KEY,
    username             text NOT NULL UNIQUE
                         CHECK (username = lower(username) AND username ~ '^[a-z0-9_][a-z0-9_-]{0,63}$'),
    kick_user_id         bigint NOT NULL UNIQUE,
    kick_channel_id      bigint UNIQUE,
    display_name         text,
    status               text NOT NULL DEFAULT 'unknown' CHECK (status IN ('online', 'offline', 'unknown')),
    status_changed_at    timestamptz,
    livestream_id        bigint,
    last_event_at        timestamptz,
    enabled              boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Where the current status came from (realtime, api, webhook, admin).
    status_source        text,
    -- When the current livestream started, as Kick reports it.
    live_started_at      timestamptz,
    -- When the writer last observed the event that set the status: stale events are older.
    last_observed_at     timestamptz,
    -- Offline grace (KICK_OFFLINE_GRACE): an offline waiting to be confirmed.
    pending_offline_at   timestamptz,
    pending_offline_raw_id bigint,
    pending_offline_source text
);
CREATE INDEX streamers_status ON streamers (status) WHERE enabled;
CREATE INDEX streamers_pending_offline ON streamers (pending_offline_at) WHERE pending_offline_at IS NOT NULL;

-- The staging table: kick-collector inserts, kick-writer claims and marks processed.
CREATE TABLE raw_events (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL CHECK (source IN ('realtime', 'api', 'webhook', 'admin')),
    topic            text,
    event_name       text NOT NULL,
    kick_channel_id  bigint,
    kick_user_id     bigint,
    livestream_id    bigint,
    event_time       timestamptz,
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    dedupe_key       text NOT NULL UNIQUE,
    collector_id     text,
    processed_at     timestamptz,
    outcome          text
);
-- The queue: only pending rows are indexed, so the index stays small however long history is kept.
CREATE INDEX raw_events_pending ON raw_events (id) WHERE processed_at IS NULL;
CREATE INDEX raw_events_pending_channel ON raw_events (kick_channel_id, id) WHERE processed_at IS NULL;
CREATE INDEX raw_events_pending_user ON raw_events (kick_user_id, id) WHERE processed_at IS NULL;
CREATE INDEX raw_events_processed_at ON raw_events (processed_at) WHERE processed_at IS NOT NULL;
-- A hot queue table: vacuum it by row count, not by fraction of a growing table.
ALTER TABLE raw_events SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                            autovacuum_vacuum_cost_delay = 1, autovacuum_analyze_scale_factor = 0.02);

-- History: one row per applied transition. Never pruned by the services.
CREATE TABLE status_events (
    id               bigserial PRIMARY KEY,
    streamer_id      bigint NOT NULL REFERENCES streamers (id) ON DELETE CASCADE,
    previous_status  text NOT NULL CHECK (previous_status IN ('online', 'offline', 'unknown')),
    new_status       text NOT NULL CHECK (new_status IN ('online', 'offline', 'unknown')),
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    livestream_id    bigint,
    source           text NOT NULL,
    -- The staged row that caused it. No foreign key: staged rows are pruned, history is not.
    raw_event_id     bigint UNIQUE
);
CREATE INDEX status_events_streamer ON status_events (streamer_id, occurred_at DESC);
CREATE INDEX status_events_recorded ON status_events (recorded_at DESC);

-- Settings stored in the database; secret values are AES-256-GCM ciphertext (see kick-admin config).
CREATE TABLE config (
    key         text PRIMARY KEY CHECK (key ~ '^[A-Z][A-Z0-9_]{0,127}$'),
    value       text NOT NULL,
    encrypted   boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One heartbeat row per running collector.
CREATE TABLE collectors (
    id             text PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    started_at     timestamptz NOT NULL,
    heartbeat_at   timestamptz NOT NULL,
    sockets        integer NOT NULL DEFAULT 0,
    sockets_up     integer NOT NULL DEFAULT 0,
    subscriptions  integer NOT NULL DEFAULT 0,
    transport      text NOT NULL,
    version        text NOT NULL
);

-- Gaps in realtime coverage: a socket down from/to, and what the reconcile after it found.
CREATE TABLE coverage_gaps (
    id                 bigserial PRIMARY KEY,
    collector_id       text NOT NULL,
    shard              integer NOT NULL,
    channels           integer NOT NULL,
    down_from          timestamptz NOT NULL,
    down_to            timestamptz,
    close_code         integer,
    reason             text,
    transitions_found  integer
);
CREATE INDEX coverage_gaps_from ON coverage_gaps (down_from DESC);

-- Who is online since when, and from which source.
CREATE VIEW v_streamer_status AS
SELECT s.id, s.username, s.display_name, s.status, s.status_changed_at AS since,
       s.livestream_id, s.status_source AS source, s.last_event_at, s.enabled,
       s.kick_user_id, s.kick_channel_id
FROM streamers s;

-- Queue depth and the age of the oldest pending staged row.
CREATE VIEW v_pending_events AS
SELECT count(*) AS pending,
       min(received_at) AS oldest_received_at,
       coalesce(extract(epoch FROM now() - min(received_at)), 0)::double precision AS oldest_age_seconds
FROM raw_events
WHERE processed_at IS NULL;

-- The set to watch changed: collectors re-read streamers and (un)subscribe. Statement-level, so a
-- bulk import rings once.
CREATE FUNCTION notify_streamers_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('streamers_changed', '');
    RETURN NULL;
END $$;
CREATE TRIGGER streamers_changed_ins AFTER INSERT OR DELETE ON streamers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_streamers_changed();
CREATE TRIGGER streamers_changed_upd AFTER UPDATE OF enabled, kick_channel_id ON streamers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_streamers_changed();
