-- 0002: trusted provisioning: the number identity pool (R3), EULA versions (R4), enrolment
-- codes, enrolled devices (R5, R9, R10), device registrations, security events (R14).
--
-- Same portability rules as 0001, with one SQLite-specific spot a PostgreSQL twin changes:
-- `security_events.id` (here AUTOINCREMENT, so ids are never reused; there an identity
-- column). Partial unique indexes (`WHERE ...`) exist in both.

-- The number identity pool. An identifier is `free`, `assigned` (to `device_id`) or
-- `quarantined` (after its device was revoked; `device_id` is the last holder). `changed_at_ms`
-- is when it entered its state (the quarantine time for `quarantined`).
CREATE TABLE identifiers (
    identifier    TEXT    NOT NULL PRIMARY KEY,
    state         TEXT    NOT NULL DEFAULT 'free'
                          CHECK (state IN ('free', 'assigned', 'quarantined')),
    device_id     TEXT,
    changed_at_ms BIGINT,
    CHECK ((state = 'free') = (device_id IS NULL))
);

-- Lowest free identifier first; quarantine release by age.
CREATE INDEX identifiers_state ON identifiers (state, identifier);
CREATE INDEX identifiers_changed ON identifiers (state, changed_at_ms);
-- An identifier is never held by two devices, and a device holds at most one.
CREATE UNIQUE INDEX identifiers_assigned_device ON identifiers (device_id)
    WHERE state = 'assigned';

-- EULA versions. The current one is the last published: highest `published_at_ms`, ties
-- broken by publication order (`seq`, assigned by the store).
CREATE TABLE eulas (
    version         TEXT    NOT NULL PRIMARY KEY,
    text            TEXT    NOT NULL,
    published_at_ms BIGINT  NOT NULL,
    seq             BIGINT  NOT NULL UNIQUE
);

-- Enrolled devices. Not tied to the subscriber by a foreign key: a deleted subscriber's
-- devices stay on record, revoked.
CREATE TABLE devices (
    id                  TEXT    NOT NULL PRIMARY KEY,
    username            TEXT    NOT NULL,
    identifier          TEXT    NOT NULL REFERENCES identifiers (identifier),
    security_level      TEXT    NOT NULL,
    zone_public_key     TEXT    NOT NULL,
    eula_version        TEXT    NOT NULL REFERENCES eulas (version),
    eula_accepted_at_ms BIGINT  NOT NULL,
    license_key_enc     TEXT    NOT NULL,
    sip_ha1_md5         TEXT    NOT NULL,
    sip_ha1_sha256      TEXT    NOT NULL,
    token_hash          TEXT    NOT NULL UNIQUE,
    -- 1 = the single-number service is on, 0 = off.
    service_on          INTEGER NOT NULL DEFAULT 1,
    revoked_reason      TEXT,
    revoked_at_ms       BIGINT,
    created_at_ms       BIGINT  NOT NULL,
    CHECK ((revoked_reason IS NULL) = (revoked_at_ms IS NULL))
);

CREATE INDEX devices_username ON devices (username, created_at_ms, id);
CREATE INDEX devices_created ON devices (created_at_ms, id);
-- A live (not revoked) device's identifier is its own.
CREATE UNIQUE INDEX devices_identifier_live ON devices (identifier)
    WHERE revoked_at_ms IS NULL;

-- One-time enrolment codes; only a hash of the code is stored. They go with their
-- subscriber.
CREATE TABLE enrolments (
    code_hash     TEXT    NOT NULL PRIMARY KEY,
    username      TEXT    NOT NULL REFERENCES subscribers (username) ON DELETE CASCADE,
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL,
    used_at_ms    BIGINT,
    device_id     TEXT    REFERENCES devices (id)
);

CREATE INDEX enrolments_username ON enrolments (username, created_at_ms, code_hash);

-- A phone's binding remembers the device, so it is still known to be the phone's after a
-- restart.
ALTER TABLE registrations ADD COLUMN device_id TEXT REFERENCES devices (id);

CREATE INDEX registrations_device_id ON registrations (device_id);

-- Security events (R14), read by id order.
CREATE TABLE security_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     BIGINT  NOT NULL,
    kind      TEXT    NOT NULL,
    username  TEXT,
    device_id TEXT,
    call_id   TEXT,
    detail    TEXT    NOT NULL
);
