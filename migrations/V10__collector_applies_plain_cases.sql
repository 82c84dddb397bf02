-- The collector applies the plain cases itself (collector/src/apply.rs says which, and why):
-- its staging statement inserts a realtime live or offline whose outcome the writer's
-- transition could only decide one way already processed ('applied'), and writes the status,
-- its history row and the status_changed notification in the same statement. Everything else
-- is staged pending, for the writer, exactly as before.
--
-- The collector's role still may not write a status: this function, owned by the schema's
-- owner and executable by kick_collector only, is the one thing that does it for the
-- collector, and it writes nothing but what the transition would. Parameters, in order: the
-- staged rows' source, topic, event name, channel id, user id, livestream id, event time,
-- payload (text, cast to jsonb), dedupe key; the collector's id; observation time, received_at
-- override, outcome (rejected rows), ring the doorbell, lease shard, lease token; whether
-- offlines apply (the offline grace is zero). The doorbell rings only when a row was left
-- pending.
CREATE FUNCTION stage_applying(
    text[], text[], text[], bigint[], bigint[], bigint[], timestamptz[], text[], text[], text,
    timestamptz[], timestamptz[], text[], boolean, integer[], bigint[], boolean,
    OUT inserted bigint, OUT fenced bigint, OUT applied bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    left_pending bigint;
BEGIN
    -- Called by the stager in a transaction of its own. A caller that keeps the transaction
    -- open (leaked credentials) would keep the streamers' row locks: it is ended after 5 s.
    PERFORM set_config('idle_in_transaction_session_timeout', '5s', true);
    WITH v AS MATERIALIZED (
        SELECT v.*, least(coalesce(v.r, clock_timestamp()), clock_timestamp()) AS rcv
        FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, $13, $15, $16)
             WITH ORDINALITY AS v(s, t, n, c, u, l, e, p, k, o, r, x, g, f, i)),
      -- Rows of the batch per channel id and per dedupe key (a window: sorted once, not
      -- compared pairwise).
      ok AS MATERIALIZED (
        SELECT v.*, count(*) OVER (PARTITION BY v.c) AS nc, count(*) OVER (PARTITION BY v.k) AS nk
        FROM v
        WHERE v.g IS NULL OR EXISTS (
            SELECT 1 FROM shard_leases sl
            WHERE sl.shard = v.g
              AND (sl.token = v.f OR (sl.prev_token = v.f AND sl.handoff_until > clock_timestamp())))),
      -- The users rows of the batch name: a streamer with another row in the batch (by its
      -- channel or its user) is the writer's, which applies them in order.
      users AS MATERIALIZED (
        SELECT DISTINCT ok.u FROM ok WHERE ok.u IS NOT NULL),
      fast AS MATERIALIZED (
        SELECT ok.k, st.id AS sid, st.username, st.status AS prev, st.livestream_id AS cur,
               st.live_started_at AS prev_started, ok.n = 'StreamerIsLive' AS live, ok.l, ok.rcv,
               CASE WHEN ok.e <= ok.rcv + interval '5 minutes' AND ok.e >= ok.rcv - interval '30 days'
                    THEN ok.e ELSE ok.rcv END AS occ
        FROM ok
        CROSS JOIN LATERAL (
            SELECT s.id, s.username, s.kick_user_id, s.status, s.livestream_id, s.last_observed_at,
                   s.live_started_at, s.pending_offline_at
            FROM streamers s WHERE s.kick_channel_id = ok.c
            FOR UPDATE SKIP LOCKED) st
        WHERE ok.s = 'realtime' AND ok.x IS NULL AND ok.c IS NOT NULL AND ok.l IS NOT NULL
          AND ok.n IN ('StreamerIsLive', 'StopStreamBroadcast') AND isfinite(ok.rcv)
          AND ok.u IS NULL AND ok.nc = 1 AND ok.nk = 1
          -- A large batch (a backlog) is the writer's: it claims in bulk, and the checks
          -- here cost per row.
          AND (SELECT count(*) FROM ok) <= 1000
          -- A key staged already is a duplicate: no lock for it.
          AND NOT EXISTS (SELECT 1 FROM raw_events rk WHERE rk.dedupe_key = ok.k)
          AND st.pending_offline_at IS NULL
          AND st.kick_user_id NOT IN (SELECT users.u FROM users)
          AND NOT EXISTS (
              SELECT 1 FROM raw_events re
              WHERE re.processed_at IS NULL
                AND (re.kick_channel_id = ok.c OR re.kick_user_id = st.kick_user_id))
          AND CASE
              WHEN ok.n = 'StreamerIsLive' THEN
                  CASE WHEN st.livestream_id IS NOT NULL THEN ok.l > st.livestream_id
                       ELSE st.status IN ('offline', 'unknown')
                            AND (st.last_observed_at IS NULL OR ok.rcv >= st.last_observed_at) END
              WHEN $17 THEN
                  st.status = 'online'
                  AND CASE WHEN st.livestream_id IS NOT NULL THEN ok.l = st.livestream_id
                           ELSE st.last_observed_at IS NULL OR ok.rcv >= st.last_observed_at END
              ELSE false END),
      ins AS (
        INSERT INTO raw_events
            (source, topic, event_name, kick_channel_id, kick_user_id, livestream_id, event_time,
             payload, dedupe_key, collector_id, observed_at, received_at, processed_at, outcome,
             lease_shard, lease_token)
        SELECT ok.s, ok.t, ok.n, ok.c, ok.u, ok.l, ok.e, ok.p::jsonb, ok.k, $10, ok.o, ok.rcv,
               CASE WHEN ok.x IS NOT NULL OR fast.k IS NOT NULL THEN clock_timestamp() END,
               CASE WHEN fast.k IS NOT NULL THEN 'applied' ELSE ok.x END, ok.g, ok.f
        FROM ok LEFT JOIN fast ON fast.k = ok.k
        -- In the batch's order: the ids are the staging order the writer applies by (the
        -- windows above sort by channel and key).
        ORDER BY ok.i
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING raw_events.id, raw_events.dedupe_key, raw_events.processed_at IS NULL AS pending),
      a AS MATERIALIZED (
        SELECT fast.*, ins.id AS raw_id FROM fast JOIN ins ON ins.dedupe_key = fast.k),
      upd AS (
        UPDATE streamers s SET
            status = CASE WHEN a.live THEN 'online' ELSE 'offline' END,
            livestream_id = a.l, last_observed_at = a.rcv, status_source = 'realtime',
            status_changed_at = a.occ, last_event_at = a.occ,
            live_started_at = CASE WHEN a.live THEN a.occ WHEN a.cur IS NOT NULL THEN a.prev_started END,
            status_reason = NULL, updated_at = now()
        FROM a WHERE s.id = a.sid),
      h AS (
        INSERT INTO status_events
            (streamer_id, previous_status, new_status, occurred_at, livestream_id, source, raw_event_id)
        SELECT a.sid, a.prev, CASE WHEN a.live THEN 'online' ELSE 'offline' END, a.occ, a.l,
               'realtime', a.raw_id
        FROM a
        ON CONFLICT (raw_event_id) DO NOTHING)
    SELECT (SELECT count(*) FROM ins),
           (SELECT count(*) FROM v) - (SELECT count(*) FROM ok),
           (SELECT count(pg_notify('status_changed', a.username)) FROM a),
           (SELECT count(*) FROM ins WHERE ins.pending)
    INTO inserted, fenced, applied, left_pending;
    IF $14 AND left_pending > 0 THEN
        PERFORM pg_notify('raw_events', '');
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION stage_applying FROM PUBLIC;

-- The service role, when it exists already (an upgrade); `kick-admin db roles` grants the same.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kick_collector') THEN
        GRANT EXECUTE ON FUNCTION stage_applying TO kick_collector;
    END IF;
END $$;
