-- 0001: subscribers and their registrations.
--
-- Portable on purpose (a PostgreSQL twin should be the same text): plain TEXT / BIGINT /
-- INTEGER columns, no STRICT tables, no rowid tricks. The user-name column is `username`
-- because `user` is a reserved word in PostgreSQL. Unsigned Rust fields (u32) are BIGINT so
-- they fit PostgreSQL's signed integers. Text is compared bytewise (SQLite BINARY); a
-- PostgreSQL twin needs COLLATE "C" on these columns to order the same way.

CREATE TABLE subscribers (
    username          TEXT    NOT NULL PRIMARY KEY,
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
    username      TEXT    NOT NULL REFERENCES subscribers (username) ON DELETE CASCADE,
    contact       TEXT    NOT NULL,
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
