-- Book one slot for a customer, unless the slot is taken.
-- Arguments: slot (a timestamptz, e.g. "2026-03-01T10:00:00Z"), customer.
-- reject_if_empty: that slot is already booked
INSERT INTO booking (tenant_id, slot, customer)
SELECT :tenant, :slot::timestamptz, :customer
WHERE NOT EXISTS (
    SELECT 1 FROM booking
    WHERE tenant_id = :tenant AND slot = :slot::timestamptz
)
RETURNING id, slot, customer;
