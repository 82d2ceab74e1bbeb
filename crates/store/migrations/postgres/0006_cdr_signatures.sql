-- CDR tamper evidence, version 2 (docs/cdr.md). Twin of sqlite/0006_cdr_signatures.sql.
ALTER TABLE cdrs ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE cdrs ADD COLUMN sig TEXT;

-- The entity rows are append-only too (deleting them hid records from `?entity=`).
CREATE TRIGGER cdr_entities_no_update BEFORE UPDATE OR DELETE ON cdr_entities
    FOR EACH ROW EXECUTE FUNCTION trustring_append_only();
CREATE TRIGGER cdr_entities_no_truncate BEFORE TRUNCATE ON cdr_entities
    FOR EACH STATEMENT EXECUTE FUNCTION trustring_append_only();
