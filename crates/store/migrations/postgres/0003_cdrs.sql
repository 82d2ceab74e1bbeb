-- Call detail records (SPEC R18); the PostgreSQL twin of sqlite/0003_cdrs.sql. `id` is
-- assigned by the store (last id + 1 under an advisory lock, with the chain head).
CREATE TABLE cdrs (
    id        BIGINT  PRIMARY KEY,
    call_id   TEXT    NOT NULL,
    setup_ms  BIGINT  NOT NULL,
    end_ms    BIGINT  NOT NULL,
    body      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX cdrs_setup ON cdrs (setup_ms);

CREATE TABLE cdr_entities (
    cdr_id BIGINT  NOT NULL REFERENCES cdrs (id),
    entity TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (cdr_id, entity)
);
CREATE INDEX cdr_entities_entity ON cdr_entities (entity, cdr_id);

-- Append-only through this schema: changing, removing or truncating is refused. (The owner
-- can drop these; the hash chain then shows where the records were changed.)
CREATE FUNCTION trustring_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER cdrs_no_update BEFORE UPDATE OR DELETE ON cdrs
    FOR EACH ROW EXECUTE FUNCTION trustring_append_only();
CREATE TRIGGER cdrs_no_truncate BEFORE TRUNCATE ON cdrs
    FOR EACH STATEMENT EXECUTE FUNCTION trustring_append_only();
