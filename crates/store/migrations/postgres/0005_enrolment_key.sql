-- 0005: an enrolment code is bound to the first trusted-zone key that presents it (R28).
-- Twin of sqlite/0005_enrolment_key.sql.
ALTER TABLE enrolments ADD COLUMN zone_public_key TEXT;
ALTER TABLE enrolments ADD COLUMN presented_at_ms BIGINT;
