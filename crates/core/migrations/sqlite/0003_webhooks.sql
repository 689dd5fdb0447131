-- Webhooks (SQLite): endpoints, one delivery row per (event, endpoint) written
-- in the same transaction as the event, and every attempt made for it.
-- Times are Unix microseconds; ids are UUIDv7 text.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT,
    -- Space-separated patterns: `*`, `agent.*`, `message.received`.
    event_types TEXT NOT NULL,
    agent_id TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    -- The HMAC key (base64, without the whsec_ prefix). It must be stored to
    -- sign; it never leaves the server after creation/rotation.
    signing_key TEXT NOT NULL,
    previous_signing_key TEXT,
    previous_key_until INTEGER,
    -- Start of the current run of failed attempts; NULL after a success.
    failing_since INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX webhook_endpoints_live ON webhook_endpoints(enabled, deleted_at);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id),
    -- NULL for test pings, which carry their own payload.
    event_id INTEGER,
    payload TEXT,
    -- The `webhook-id` header: the same on every retry and replay.
    webhook_id TEXT NOT NULL,
    -- pending, succeeded, failed, cancelled
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    lease_until INTEGER,
    lease_owner TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(endpoint_id, event_id);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id),
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    node TEXT NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, id);
