-- A phone's own number (E.164), for its leg through the IP->PSTN gateway (R15). At most one
-- active (not revoked) phone per number. Twin of sqlite/0004_device_number.sql.
ALTER TABLE devices ADD COLUMN number TEXT;
CREATE UNIQUE INDEX devices_active_number ON devices (number)
    WHERE number IS NOT NULL AND revoked_at_ms IS NULL;
