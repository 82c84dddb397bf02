-- Several collectors share the channels through leases held here (see the collector's `leases`
-- module and ARCHITECTURE.md, "Shard leases").
--
-- A channel belongs to shard `kick_channel_id mod 64` (a streamer without a channel id to
-- `kick_user_id mod 64`). Each shard has one lease per replica (KICK_SHARD_REPLICAS); a lease is
-- held by one collector until `expires_at`, renewed with every lease round (every 2 s), and
-- carries a fencing token from one sequence: a new owner always gets a new token, and the
-- collector stages each status row with the token of the lease it held when it saw the event.
-- The staging insert keeps a row only while that token is still the lease's (or, for a few
-- seconds after a planned handoff, its previous one): a collector that lost its lease cannot
-- stage as the owner any more.

-- The collectors taking part, and until when each counts as alive (renewed with its leases).
-- `instance` tells two processes with the same id apart (a configuration error: the second
-- waits and says so); `replicas` is each collector's KICK_SHARD_REPLICAS (the rounds use the
-- largest among the living, so collectors that disagree cannot fight).
CREATE TABLE shard_members (
    collector_id text PRIMARY KEY,
    host         text NOT NULL,
    instance     text NOT NULL,
    replicas     integer NOT NULL CHECK (replicas BETWEEN 1 AND 3),
    alive_until  timestamptz NOT NULL,
    joined_at    timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE shard_lease_token;

CREATE TABLE shard_leases (
    shard         integer NOT NULL CHECK (shard >= 0),
    replica       integer NOT NULL CHECK (replica >= 0),
    owner         text,
    token         bigint NOT NULL DEFAULT 0,
    expires_at    timestamptz,
    acquired_at   timestamptz,
    -- The token of the previous owner during a planned handoff, accepted until `handoff_until`
    -- (both collectors are subscribed for that moment: no gap; duplicates dedupe).
    prev_token    bigint,
    handoff_until timestamptz,
    -- Why the current owner got it (`owner gone`, `rebalance`, `unowned`, ...).
    reason        text,
    PRIMARY KEY (shard, replica)
);
CREATE INDEX shard_leases_token ON shard_leases (token);

INSERT INTO shard_leases (shard, replica)
SELECT s, 0 FROM generate_series(0, 63) AS s;

-- Every change of owner, for `kick-admin status` and for the record.
CREATE TABLE shard_moves (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    shard      integer NOT NULL,
    replica    integer NOT NULL,
    from_owner text,
    to_owner   text,
    token      bigint NOT NULL,
    reason     text NOT NULL
);
CREATE INDEX shard_moves_at ON shard_moves (at DESC);

-- The shard and token a status row was staged with (NULL: not fenced, e.g. webhooks and
-- channel ids), so that fencing can be audited with psql.
ALTER TABLE raw_events ADD COLUMN lease_shard integer, ADD COLUMN lease_token bigint;
