-- The tenant's bookings in [from, until), in slot order (read-only; it runs
-- in the tenant's lane, so it sees every booking acknowledged before it).
-- Arguments: from, until (timestamptz).
SELECT id, slot, customer
FROM booking
WHERE tenant_id = :tenant
  AND slot >= :from::timestamptz AND slot < :until::timestamptz
ORDER BY slot, id;
