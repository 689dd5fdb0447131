-- A mailbox entry carries the columns a list shows, copied from its message
-- (which never changes), so a page of 50 reads the agent's entries through
-- one index range and no longer fetches 50 scattered message rows as well.
-- (SQLite also clusters the entries by agent; PostgreSQL's heap keeps
-- arrival order whatever the key.)
ALTER TABLE mailbox_entries
    ADD COLUMN seq BIGINT,
    ADD COLUMN subject TEXT,
    ADD COLUMN from_json TEXT,
    ADD COLUMN to_json TEXT,
    ADD COLUMN cc_json TEXT,
    ADD COLUMN snippet TEXT,
    ADD COLUMN date_at BIGINT,
    ADD COLUMN has_attachments BIGINT,
    ADD COLUMN message_id_header TEXT,
    ADD COLUMN from_key TEXT,
    ADD COLUMN to_key TEXT;

UPDATE mailbox_entries e
   SET seq = m.seq, subject = m.subject, from_json = m.from_json, to_json = m.to_json, cc_json = m.cc_json,
       snippet = m.snippet, date_at = m.date_at,
       has_attachments = CASE WHEN length(m.attachments) > 2 THEN 1 ELSE 0 END,
       message_id_header = m.message_id_header, from_key = m.from_key, to_key = m.to_key
  FROM messages m
 WHERE m.id = e.message_id;

ALTER TABLE mailbox_entries
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN from_json SET NOT NULL,
    ALTER COLUMN to_json SET NOT NULL,
    ALTER COLUMN cc_json SET NOT NULL,
    ALTER COLUMN has_attachments SET NOT NULL,
    ALTER COLUMN from_key SET NOT NULL,
    ALTER COLUMN to_key SET NOT NULL;

