-- Truthful to the real Kick: which streamers realtime really covers, where each channel is
-- served, and why a status is unknown.

-- The channels a collector has subscribed, reported by the collector itself (it cannot write
-- `streamers`). A row counts only while its collector's heartbeat is fresh.
CREATE TABLE channel_coverage (
    kick_channel_id bigint NOT NULL,
    collector_id    text NOT NULL,
    since           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kick_channel_id, collector_id)
);
CREATE INDEX channel_coverage_collector ON channel_coverage (collector_id);

-- Where Kick serves each channel's realtime feed (its answer to the per-channel negotiation),
-- cached so that it is asked rarely and paced.
CREATE TABLE channel_regions (
    kick_channel_id bigint PRIMARY KEY,
    url             text NOT NULL,
    checked_at      timestamptz NOT NULL DEFAULT now()
);

-- Why the status is what it is, when that is worth saying (e.g. an unknown status: "missing from
-- kick's channels answer twice").
ALTER TABLE streamers ADD COLUMN status_reason text;

-- Who is online since when, from which source, and how each streamer is covered: `realtime`
-- (channel id known and subscribed by a live collector), `webhook` (an active webhook
-- subscription; see the webhooks receiver), or `poll` (the official API, every
-- KICK_POLL_INTERVAL).
CREATE OR REPLACE VIEW v_streamer_status AS
SELECT s.id, s.username, s.display_name, s.status, s.status_changed_at AS since,
       s.livestream_id, s.status_source AS source, s.last_event_at, s.enabled,
       s.kick_user_id, s.kick_channel_id,
       CASE
           WHEN s.kick_channel_id IS NOT NULL AND EXISTS (
               SELECT 1 FROM channel_coverage c JOIN collectors k ON k.id = c.collector_id
               WHERE c.kick_channel_id = s.kick_channel_id
                 AND k.heartbeat_at > now() - interval '90 seconds')
           THEN 'realtime'
           ELSE 'poll'
       END AS coverage,
       s.status_reason
FROM streamers s;
