-- CDR tamper evidence, version 2 (docs/cdr.md). A new record's hash also covers its id, its
-- call_id, setup_ms and end_ms columns and its billing-entity rows, and the record is signed
-- with an Ed25519 key kept outside the database (`sig`, hex). Records written before keep
-- version 1 and no signature: their body covers call_id, setup_ms, end_ms and their billing
-- entities, which `cdr verify` compares with the columns and rows.
ALTER TABLE cdrs ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE cdrs ADD COLUMN sig TEXT;

-- The entity rows are append-only too (deleting them hid records from `?entity=`).
CREATE TRIGGER cdr_entities_no_update BEFORE UPDATE ON cdr_entities
BEGIN SELECT RAISE(ABORT, 'cdr_entities are append-only'); END;
CREATE TRIGGER cdr_entities_no_delete BEFORE DELETE ON cdr_entities
BEGIN SELECT RAISE(ABORT, 'cdr_entities are append-only'); END;
