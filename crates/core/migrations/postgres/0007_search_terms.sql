-- The full-text index's words now come from the server, which splits the
-- text into runs of letters and digits (ingest.rs, search_terms) and sends
-- them as a tsvector. to_tsvector with the default parser cost PostgreSQL
-- about 1 ms of CPU per 5 KB message, inside the mail group commit. The
-- index keeps only the tsvector: the text columns were never read back.
-- Rows indexed before keep the words the default parser found; searches
-- split their words the same way as before, so those rows match as they
-- did.
ALTER TABLE message_search ALTER COLUMN tsv DROP EXPRESSION;
ALTER TABLE message_search DROP COLUMN subject, DROP COLUMN addresses, DROP COLUMN body, DROP COLUMN agents;
