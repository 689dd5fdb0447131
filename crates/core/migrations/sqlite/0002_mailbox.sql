-- Mailbox schema (SQLite): messages stored once, filed into each recipient
-- agent's mailbox; threads; labels; per-agent usage counters; full-text
-- search (FTS5). Times are Unix microseconds; ids are UUIDv7 text.

-- One row per received message (its content is shared by every recipient).
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    -- Dense integer key for the full-text index (allocated under the write lock).
    seq INTEGER NOT NULL UNIQUE,
    blob_hash TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    client_ip TEXT,
    helo TEXT,
    mail_from TEXT NOT NULL,
    rcpt_to TEXT NOT NULL,
    tls INTEGER NOT NULL DEFAULT 0,
    auth_results TEXT,
    message_id_header TEXT,
    in_reply_to TEXT NOT NULL,
    refs TEXT NOT NULL,
    subject TEXT,
    from_json TEXT NOT NULL,
    to_json TEXT NOT NULL,
    cc_json TEXT NOT NULL,
    reply_to_json TEXT NOT NULL,
    date_at INTEGER,
    snippet TEXT,
    attachments TEXT NOT NULL,
    from_key TEXT NOT NULL,
    to_key TEXT NOT NULL
);
CREATE INDEX messages_message_id ON messages(message_id_header);
CREATE INDEX messages_blob ON messages(blob_hash);

CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    subject TEXT,
    subject_key TEXT NOT NULL,
    participants_key TEXT NOT NULL,
    -- Every address seen in the thread, space-separated.
    participants TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX threads_subject ON threads(agent_id, subject_key, participants_key);

-- A message filed in one agent's mailbox, with that agent's state of it.
CREATE TABLE mailbox_entries (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    message_id TEXT NOT NULL REFERENCES messages(id),
    thread_id TEXT NOT NULL REFERENCES threads(id),
    folder TEXT NOT NULL,
    unread INTEGER NOT NULL,
    starred INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    -- When it entered its current folder (retention counts from here).
    folder_at INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (agent_id, message_id)
);
CREATE INDEX mailbox_entries_time ON mailbox_entries(agent_id, received_at, message_id);
CREATE INDEX mailbox_entries_folder ON mailbox_entries(agent_id, folder, received_at, message_id);
CREATE INDEX mailbox_entries_thread ON mailbox_entries(agent_id, thread_id);
CREATE INDEX mailbox_entries_message ON mailbox_entries(message_id);
CREATE INDEX mailbox_entries_expiry ON mailbox_entries(folder, folder_at);

CREATE TABLE message_labels (
    agent_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (agent_id, message_id, label)
);
CREATE INDEX message_labels_label ON message_labels(agent_id, label);

-- Storage quota counter, updated in the same transaction as the filing.
CREATE TABLE mailbox_usage (
    agent_id TEXT PRIMARY KEY REFERENCES agents(id),
    bytes INTEGER NOT NULL,
    messages INTEGER NOT NULL
);

-- rowid = messages.seq
CREATE VIRTUAL TABLE message_search USING fts5(subject, addresses, body, tokenize = 'unicode61 remove_diacritics 2');
