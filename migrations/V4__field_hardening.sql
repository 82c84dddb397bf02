-- Faults of the field: one clock for ordering, health in the heartbeat, settings that notify.

-- Rows are ordered by the database's clock, never a collector's: `received_at` is stamped by the
-- server at insert (a collector whose clock is five minutes fast cannot make newer events
-- stale). The collector's own observation time is kept as information.
ALTER TABLE raw_events ALTER COLUMN received_at SET DEFAULT clock_timestamp();
ALTER TABLE raw_events ADD COLUMN observed_at timestamptz;
COMMENT ON COLUMN raw_events.received_at IS
    'When the database received the row (its own clock, or the collector''s observation corrected for its measured skew when the event waited in a buffer or spool): the ordering key.';
COMMENT ON COLUMN raw_events.observed_at IS
    'When the collector observed the event, by the collector''s clock (information only).';

-- What a collector reports about itself with each heartbeat, so that `kick-admin status` tells
-- the truth: its problems (each with a start), what waits in memory or in its spool, and how far
-- its clock is from the database's.
ALTER TABLE collectors
    ADD COLUMN healthy            boolean NOT NULL DEFAULT true,
    ADD COLUMN problems           jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN buffered           integer NOT NULL DEFAULT 0,
    ADD COLUMN spooled            integer NOT NULL DEFAULT 0,
    ADD COLUMN oldest_buffered_at timestamptz,
    ADD COLUMN clock_skew_ms      integer,
    ADD COLUMN watched_channels   integer NOT NULL DEFAULT 0;

-- Settings changed (`kick-admin config set/unset`): running services re-read them.
CREATE FUNCTION notify_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('config_changed', '');
    RETURN NULL;
END $$;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE ON config
    FOR EACH STATEMENT EXECUTE FUNCTION notify_config_changed();
