-- The stager's durable barrier. A staged batch commits asynchronously (visible to the writer at
-- once); right after it, in the same round trip, the stager updates its own row here in a
-- transaction committed with synchronous_commit = on. That commit writes to the log and flushes
-- it up to and past the batch, so the batch counts as staged only once it is on disk. (A
-- transaction that writes nothing to the log, such as an insert whose rows all conflict, commits
-- without a flush; this row always gives it something to write.)
CREATE TABLE staging_barriers (
    stager text PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- The service roles, when they exist already (an upgrade); `kick-admin db roles` grants the same.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kick_collector') THEN
        GRANT SELECT, INSERT, UPDATE ON staging_barriers TO kick_collector;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kick_webhooks') THEN
        GRANT SELECT, INSERT, UPDATE ON staging_barriers TO kick_webhooks;
    END IF;
END $$;
