-- Foundation schema (PostgreSQL). Times are Unix microseconds; ids are UUIDv7 text.
CREATE TABLE organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations(id),
    name TEXT NOT NULL UNIQUE,
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE dkim_keys (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains(id),
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key_pem TEXT NOT NULL,
    public_key_b64 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (domain_id, selector)
);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations(id),
    name TEXT NOT NULL UNIQUE,
    settings TEXT NOT NULL,
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations(id),
    address TEXT NOT NULL,
    address_key TEXT NOT NULL,
    domain_id TEXT NOT NULL REFERENCES domains(id),
    display_name TEXT,
    sponsor TEXT NOT NULL,
    description TEXT,
    policy_id TEXT REFERENCES policies(id),
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    decommissioned_at BIGINT
);
-- One live agent per address, case-insensitively; decommissioned rows stay for the record.
CREATE UNIQUE INDEX agents_live_address ON agents(address_key) WHERE status <> 'decommissioned';
CREATE INDEX agents_status ON agents(status, id);

CREATE TABLE tombstones (
    address_key TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    until_at BIGINT NOT NULL
);

CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations(id),
    kind TEXT NOT NULL,
    agent_id TEXT REFERENCES agents(id),
    name TEXT NOT NULL,
    subject TEXT,
    secret_hash TEXT NOT NULL UNIQUE,
    last4 TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    last_used_at BIGINT,
    expires_at BIGINT,
    revoked_at BIGINT,
    replaced_by TEXT
);
CREATE INDEX credentials_agent ON credentials(agent_id, id);
CREATE INDEX credentials_kind ON credentials(kind, id);

-- Hash-chained, append-only. Ids are assigned under the audit_head lock so
-- they are contiguous: a gap is a deletion.
CREATE TABLE audit_log (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT,
    actor_credential TEXT,
    action TEXT NOT NULL,
    target_kind TEXT,
    target_id TEXT,
    agent_id TEXT,
    outcome TEXT NOT NULL,
    request_id TEXT,
    source TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_agent ON audit_log(agent_id, id);
CREATE INDEX audit_action ON audit_log(action, id);

-- The one row every audited write locks first: serialises the chain and
-- makes event ids commit in order (so a stream reader never skips one).
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    last_id BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    last_event_id BIGINT NOT NULL
);
INSERT INTO audit_head (id, last_id, last_hash, last_event_id)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    type TEXT NOT NULL,
    at BIGINT NOT NULL,
    agent_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX events_agent ON events(agent_id, id);

CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT,
    sealed_response BYTEA,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);

CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    blob_hash TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX exports_agent ON exports(agent_id);

-- Used on PostgreSQL; on SQLite blobs live as files in the data directory.
CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);
