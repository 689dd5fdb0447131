-- Values over about 2 KB are compressed when stored: a raw message, its
-- full-text words, an event's JSON. The default (pglz) cost the mail group
-- commit more CPU than lz4, which compresses several times faster for a
-- slightly larger result. New values only; old ones read as before. A
-- server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE blobs ALTER COLUMN data SET COMPRESSION lz4;
    ALTER TABLE message_search ALTER COLUMN tsv SET COMPRESSION lz4;
    ALTER TABLE events ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available; values stay compressed with pglz';
END
$$;
