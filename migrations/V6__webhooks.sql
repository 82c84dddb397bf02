-- Kick's official webhooks as a second witness.

-- The app's `livestream.status.updated` subscriptions as last synced with Kick (by
-- `kick-admin webhooks sync` or the receiver's periodic re-sync). Kick unsubscribes an app
-- silently after a day of failed deliveries, so a row counts only while it is recent.
CREATE TABLE webhook_subscriptions (
    kick_user_id    bigint PRIMARY KEY,
    subscription_id text NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);

-- Coverage: realtime first, then an active webhook subscription (synced within 30 minutes),
-- else polling.
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
           WHEN EXISTS (
               SELECT 1 FROM webhook_subscriptions w
               WHERE w.kick_user_id = s.kick_user_id AND w.synced_at > now() - interval '30 minutes')
           THEN 'webhook'
           ELSE 'poll'
       END AS coverage,
       s.status_reason
FROM streamers s;
