-- 0002: trusted provisioning; the PostgreSQL twin of sqlite/0002_provisioning.sql. Differences:
-- `security_events.id` is an identity column (never reused), `eulas.seq` too (publication
-- order without a read-then-write), `devices.service_on` a BOOLEAN.

CREATE TABLE identifiers (
    identifier    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    state         TEXT    NOT NULL DEFAULT 'free'
                          CHECK (state IN ('free', 'assigned', 'quarantined')),
    device_id     TEXT COLLATE "C",
    changed_at_ms BIGINT,
    CHECK ((state = 'free') = (device_id IS NULL))
);

CREATE INDEX identifiers_state ON identifiers (state, identifier);
CREATE INDEX identifiers_changed ON identifiers (state, changed_at_ms);
CREATE UNIQUE INDEX identifiers_assigned_device ON identifiers (device_id)
    WHERE state = 'assigned';

CREATE TABLE eulas (
    version         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    text            TEXT    NOT NULL,
    published_at_ms BIGINT  NOT NULL,
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE devices (
    id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    username            TEXT COLLATE "C" NOT NULL,
    identifier          TEXT COLLATE "C" NOT NULL REFERENCES identifiers (identifier),
    security_level      TEXT    NOT NULL,
    zone_public_key     TEXT    NOT NULL,
    eula_version        TEXT COLLATE "C" NOT NULL REFERENCES eulas (version),
    eula_accepted_at_ms BIGINT  NOT NULL,
    license_key_enc     TEXT    NOT NULL,
    sip_ha1_md5         TEXT    NOT NULL,
    sip_ha1_sha256      TEXT    NOT NULL,
    token_hash          TEXT COLLATE "C" NOT NULL UNIQUE,
    service_on          BOOLEAN NOT NULL DEFAULT TRUE,
    revoked_reason      TEXT,
    revoked_at_ms       BIGINT,
    created_at_ms       BIGINT  NOT NULL,
    CHECK ((revoked_reason IS NULL) = (revoked_at_ms IS NULL))
);

CREATE INDEX devices_username ON devices (username, created_at_ms, id);
CREATE INDEX devices_created ON devices (created_at_ms, id);
CREATE UNIQUE INDEX devices_identifier_live ON devices (identifier)
    WHERE revoked_at_ms IS NULL;

CREATE TABLE enrolments (
    code_hash     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    username      TEXT COLLATE "C" NOT NULL REFERENCES subscribers (username) ON DELETE CASCADE,
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL,
    used_at_ms    BIGINT,
    device_id     TEXT COLLATE "C" REFERENCES devices (id)
);

CREATE INDEX enrolments_username ON enrolments (username, created_at_ms, code_hash);

ALTER TABLE registrations ADD COLUMN device_id TEXT COLLATE "C" REFERENCES devices (id);

CREATE INDEX registrations_device_id ON registrations (device_id);

CREATE TABLE security_events (
    id        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms     BIGINT  NOT NULL,
    kind      TEXT    NOT NULL,
    username  TEXT,
    device_id TEXT,
    call_id   TEXT,
    detail    TEXT    NOT NULL
);
