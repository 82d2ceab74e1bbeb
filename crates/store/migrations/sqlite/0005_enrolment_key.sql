-- 0005: an enrolment code is bound to the first trusted-zone key that presents it (R28,
-- SECURITY.md threat 12). `zone_public_key` is that key's text form (`x25519:…` or `p256:…`),
-- set once, on the code's first presentation, in a transaction of its own: it stays even when
-- that enrolment attempt never finishes, and a different key presenting the same code is
-- refused. `presented_at_ms` is when. Both NULL until the code is first presented.
ALTER TABLE enrolments ADD COLUMN zone_public_key TEXT;
ALTER TABLE enrolments ADD COLUMN presented_at_ms BIGINT;
