-- The webhook receiver's role stages webhook rows and nothing else: an Internet-facing process
-- must not be able to pose as the collector (source 'realtime' or 'api') or as an operator.
-- Row-level security with a permissive policy for everyone keeps every other role as it was;
-- the restrictive one applies only to kick_webhooks (by name: the role is created later, by
-- `kick-admin db roles`). The table's owner bypasses both.
ALTER TABLE raw_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone ON raw_events AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK (true);
CREATE POLICY webhooks_stage_only_webhooks ON raw_events AS RESTRICTIVE FOR INSERT TO PUBLIC
    WITH CHECK (current_user <> 'kick_webhooks' OR source = 'webhook');
