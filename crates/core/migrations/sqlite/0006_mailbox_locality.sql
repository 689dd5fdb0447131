-- Locality per mailbox. An agent's mail arrives interleaved with everyone
-- else's, and both tables were rowid tables in arrival order: a page of 50
-- read about 150 scattered pages (entries, the messages index, messages),
-- each a disk read when cold. Now an entry carries the columns a list shows
-- (copied from its message, which never changes), and entries are clustered
-- by (agent, received_at, message): a page is a few adjacent b-tree pages
-- with no join. Threads are clustered by agent the same way.
--
-- Order matters under foreign_keys=ON (a migration runs in a transaction, so
-- the pragma cannot be turned off): the new entries reference the new
-- threads, the old tables are dropped children first, and the renames
-- rewrite the references.

CREATE TABLE threads_v2 (
    id TEXT NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    subject TEXT,
    subject_key TEXT NOT NULL,
    participants_key TEXT NOT NULL,
    -- Every address seen in the thread, space-separated.
    participants TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (agent_id, id)
) WITHOUT ROWID;
INSERT INTO threads_v2 (id, agent_id, subject, subject_key, participants_key, participants, created_at)
SELECT id, agent_id, subject, subject_key, participants_key, participants, created_at FROM threads;
-- Entries reference a thread by its id alone.
CREATE UNIQUE INDEX threads_id ON threads_v2(id);

CREATE TABLE mailbox_entries_v2 (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    received_at INTEGER NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages(id),
    thread_id TEXT NOT NULL REFERENCES threads_v2(id),
    folder TEXT NOT NULL,
    unread INTEGER NOT NULL,
    starred INTEGER NOT NULL,
    -- When it entered its current folder (retention counts from here).
    folder_at INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    -- Copies of the message's list columns (see above).
    seq INTEGER NOT NULL,
    subject TEXT,
    from_json TEXT NOT NULL,
    to_json TEXT NOT NULL,
    cc_json TEXT NOT NULL,
    snippet TEXT,
    date_at INTEGER,
    has_attachments INTEGER NOT NULL,
    message_id_header TEXT,
    from_key TEXT NOT NULL,
    to_key TEXT NOT NULL,
    PRIMARY KEY (agent_id, received_at, message_id)
) WITHOUT ROWID;
INSERT INTO mailbox_entries_v2 (agent_id, received_at, message_id, thread_id, folder, unread, starred, folder_at,
    size_bytes, seq, subject, from_json, to_json, cc_json, snippet, date_at, has_attachments, message_id_header,
    from_key, to_key)
SELECT e.agent_id, e.received_at, e.message_id, e.thread_id, e.folder, e.unread, e.starred, e.folder_at,
    e.size_bytes, m.seq, m.subject, m.from_json, m.to_json, m.cc_json, m.snippet, m.date_at,
    length(m.attachments) > 2, m.message_id_header, m.from_key, m.to_key
  FROM mailbox_entries e JOIN messages m ON m.id = e.message_id;

DROP TABLE mailbox_entries;
DROP TABLE threads;
ALTER TABLE threads_v2 RENAME TO threads;
ALTER TABLE mailbox_entries_v2 RENAME TO mailbox_entries;

CREATE INDEX threads_subject ON threads(agent_id, subject_key, participants_key);

CREATE UNIQUE INDEX mailbox_entries_key ON mailbox_entries(agent_id, message_id);
CREATE INDEX mailbox_entries_folder ON mailbox_entries(agent_id, folder, received_at, message_id);
CREATE INDEX mailbox_entries_thread ON mailbox_entries(agent_id, thread_id);
CREATE INDEX mailbox_entries_message ON mailbox_entries(message_id);
CREATE INDEX mailbox_entries_expiry ON mailbox_entries(folder, folder_at);
