-- The mailbox's foreign keys to its agent, message and thread go (PostgreSQL
-- only). Each was a row-locking lookup per inserted row (SELECT … FOR KEY
-- SHARE on the parent): in the inbound group commit, about half of the
-- write statement's time (1.4 of 2.7 ms per batch, auto_explain).
--
-- What they guarded is kept by the service layer: every write to a mailbox
-- holds the organisation's write lock (the audit head's row lock), parents
-- and children are inserted in one transaction, deletes remove children
-- first, and agents are never deleted (decommission keeps the row). SQLite
-- keeps the same constraints, so the test suite, which runs every storage
-- test on both backends, still fails on a write order that would orphan a
-- row.
ALTER TABLE threads DROP CONSTRAINT IF EXISTS threads_agent_id_fkey;
ALTER TABLE mailbox_entries DROP CONSTRAINT IF EXISTS mailbox_entries_agent_id_fkey;
ALTER TABLE mailbox_entries DROP CONSTRAINT IF EXISTS mailbox_entries_message_id_fkey;
ALTER TABLE mailbox_entries DROP CONSTRAINT IF EXISTS mailbox_entries_thread_id_fkey;
ALTER TABLE mailbox_usage DROP CONSTRAINT IF EXISTS mailbox_usage_agent_id_fkey;
