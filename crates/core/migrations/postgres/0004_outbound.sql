-- Outbound mail: drafts, sends (with their two-step confirmation), the
-- per-agent send counters that enforce caps, the per-recipient delivery
-- queue, and app passwords for SMTP submission. Times are Unix
-- microseconds; ids are UUIDv7 text.

CREATE TABLE drafts (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    -- The compose fields as JSON (recipients, subject, bodies, attachment
    -- metadata with blob hashes, reply_to_message_id).
    content TEXT NOT NULL,
    -- Bumped by every edit; a pending send records the version it froze.
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX drafts_agent ON drafts(agent_id, id);

-- One send request: the exact bytes (a blob) and their envelope.
CREATE TABLE sends (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    draft_id TEXT,
    -- pending_confirmation | queued | sent | failed | rejected | expired | voided
    status TEXT NOT NULL,
    blob_hash TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    mail_from TEXT NOT NULL,
    -- JSON list of envelope recipients (to, cc and bcc).
    recipients TEXT NOT NULL,
    message_id_header TEXT NOT NULL,
    subject TEXT,
    -- The copy filed in the agent's sent folder, once queued.
    message_id TEXT,
    -- api | smtp
    via TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    decided_at BIGINT,
    decided_by TEXT,
    reason TEXT,
    completed_at BIGINT
);
CREATE INDEX sends_agent ON sends(agent_id, id);
CREATE INDEX sends_status ON sends(status, expires_at);
CREATE INDEX sends_message_id ON sends(message_id_header);
-- The blob collector asks whether a send still needs its bytes.
CREATE INDEX sends_blob ON sends(blob_hash);

-- Sends counted per agent and period ('day:2026-11-28', 'hour:2026-11-28T18'),
-- incremented in the same transaction as the send it counts.
CREATE TABLE send_counters (
    agent_id TEXT NOT NULL,
    period TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (agent_id, period)
);

-- One row per remote recipient of a queued send.
CREATE TABLE outbound_queue (
    id TEXT PRIMARY KEY,
    send_id TEXT NOT NULL REFERENCES sends(id),
    agent_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    domain TEXT NOT NULL,
    -- queued | delivered | failed
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    give_up_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_reply TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX outbound_queue_due ON outbound_queue(status, next_attempt_at);
CREATE INDEX outbound_queue_send ON outbound_queue(send_id);

CREATE TABLE app_passwords (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    name TEXT NOT NULL,
    -- argon2id PHC string.
    password_hash TEXT NOT NULL,
    last4 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX app_passwords_agent ON app_passwords(agent_id);
