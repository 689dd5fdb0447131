-- Full-text search learns whose mailboxes a message is filed in: the column
-- `agents` holds one token per agent ('a' + the id's hex digits) and joins
-- the tsvector, so one GIN lookup intersects "this agent" with the words.
-- Without it, a search either probed each entry's tsvector or started from
-- the words' matches across every mailbox. A token may outlive its entry
-- (deleted from one of several mailboxes); searches still join the agent's
-- entries.
ALTER TABLE message_search ADD COLUMN agents TEXT;
UPDATE message_search s SET agents = (
    SELECT string_agg('a' || replace(e.agent_id, '-', ''), ' ')
      FROM messages m JOIN mailbox_entries e ON e.message_id = m.id WHERE m.seq = s.rowid);
DROP INDEX message_search_tsv;
ALTER TABLE message_search DROP COLUMN tsv;
ALTER TABLE message_search ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    to_tsvector('simple', coalesce(subject, '') || ' ' || coalesce(addresses, '') || ' ' || coalesce(body, '')
        || ' ' || coalesce(agents, ''))
) STORED;
CREATE INDEX message_search_tsv ON message_search USING GIN (tsv);
