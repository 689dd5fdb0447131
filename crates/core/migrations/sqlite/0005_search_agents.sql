-- Full-text search learns whose mailboxes a message is filed in: the column
-- `agents` holds one token per agent ('a' + the id's hex digits), so one
-- index lookup intersects "this agent" with the words. Without it, a search
-- either probed the index once per entry of the mailbox or started from the
-- words' matches across every mailbox. FTS5 tables cannot gain columns, so
-- the index is rebuilt. A token may outlive its entry (deleted from one of
-- several mailboxes); searches still join the agent's entries.
CREATE VIRTUAL TABLE message_search_v2 USING fts5(subject, addresses, body, agents, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO message_search_v2 (rowid, subject, addresses, body, agents)
SELECT s.rowid, s.subject, s.addresses, s.body,
       (SELECT group_concat('a' || replace(e.agent_id, '-', ''), ' ')
          FROM messages m JOIN mailbox_entries e ON e.message_id = m.id WHERE m.seq = s.rowid)
  FROM message_search s;
DROP TABLE message_search;
ALTER TABLE message_search_v2 RENAME TO message_search;
