-- The full-text index keeps only its index: nothing ever reads the text
-- columns back (searches take rowids; the summaries come from the mailbox),
-- yet FTS5's own copy of subject, addresses and body was about a tenth of
-- what every mail group commit wrote to the log (15 of 131 pages per batch
-- of ten 5 KB messages). PostgreSQL's index dropped its text columns the
-- same way (0007_search_terms.sql there). contentless_delete=1 keeps
-- `DELETE ... WHERE rowid = ?` working for retention. FTS5 tables cannot be
-- altered, so the index is rebuilt from the old copy.
CREATE VIRTUAL TABLE message_search_v3 USING fts5(subject, addresses, body, agents, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO message_search_v3 (rowid, subject, addresses, body, agents)
SELECT rowid, subject, addresses, body, agents FROM message_search;
DROP TABLE message_search;
ALTER TABLE message_search_v3 RENAME TO message_search;
