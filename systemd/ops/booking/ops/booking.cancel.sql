-- Cancel one booking by its id; an id that is not this tenant's is REJECTED.
-- Arguments: id (the integer booking.create returned).
-- reject_if_empty: no such booking
DELETE FROM booking
WHERE tenant_id = :tenant AND id = :id::bigint
RETURNING id, slot, customer;
