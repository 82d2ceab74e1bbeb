-- Call detail records (SPEC R18): append-only, each row's hash chained to the previous one.
-- `body` is the record's canonical JSON; the other columns index it for queries.
CREATE TABLE cdrs (
    id        INTEGER PRIMARY KEY,
    call_id   TEXT    NOT NULL,
    setup_ms  INTEGER NOT NULL,
    end_ms    INTEGER NOT NULL,
    body      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
) STRICT;
CREATE INDEX cdrs_setup ON cdrs (setup_ms);

-- Every billing entity a record names (for `?entity=` queries).
CREATE TABLE cdr_entities (
    cdr_id INTEGER NOT NULL REFERENCES cdrs (id),
    entity TEXT    NOT NULL,
    PRIMARY KEY (cdr_id, entity)
) STRICT;
CREATE INDEX cdr_entities_entity ON cdr_entities (entity, cdr_id);

-- Append-only through this schema: changing or removing a record is refused. (Someone with
-- the file can drop these; the hash chain then shows where the records were changed.)
CREATE TRIGGER cdrs_no_update BEFORE UPDATE ON cdrs
BEGIN SELECT RAISE(ABORT, 'cdrs are append-only'); END;
CREATE TRIGGER cdrs_no_delete BEFORE DELETE ON cdrs
BEGIN SELECT RAISE(ABORT, 'cdrs are append-only'); END;
