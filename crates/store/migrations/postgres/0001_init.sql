-- 0001: subscribers and their registrations. The PostgreSQL twin of sqlite/0001_init.sql
-- (same version, same tables and columns). Key and ordered text columns are COLLATE "C" so
-- they compare bytewise, as SQLite's BINARY does, whatever the database's locale.

CREATE TABLE subscribers (
    username          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    enterprise        TEXT    NOT NULL,
    ha1_md5           TEXT    NOT NULL,
    ha1_sha256        TEXT    NOT NULL,
    ring_timeout_secs BIGINT  NOT NULL,
    -- JSON array of {"contact_contains": TEXT, "delay_ms": u32}.
    ring_delays       TEXT    NOT NULL DEFAULT '[]',
    -- Unix seconds.
    created_at        BIGINT  NOT NULL
);

CREATE TABLE registrations (
    username      TEXT COLLATE "C" NOT NULL REFERENCES subscribers (username) ON DELETE CASCADE,
    contact       TEXT COLLATE "C" NOT NULL,
    transport     TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    local         TEXT    NOT NULL,
    call_id       TEXT    NOT NULL,
    cseq          BIGINT  NOT NULL,
    -- Unix milliseconds.
    expires_at_ms BIGINT  NOT NULL,
    -- q-value times 1000.
    q             INTEGER NOT NULL,
    PRIMARY KEY (username, contact)
);

CREATE INDEX registrations_expires_at_ms ON registrations (expires_at_ms);
