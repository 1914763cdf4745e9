-- The example booking schema behind the op files in ops/ (see
-- docs/sql-operations.md).  Create it once:  psql -f schema.sql
--
-- There is deliberately no unique constraint on (tenant_id, slot): the
-- booking.create operation checks for a free slot and inserts in one
-- statement, and tenantq running each tenant's requests one at a time under
-- the tenant's advisory lock is what keeps two creates of one slot from both
-- seeing it free.  (In production, add the constraint as well: then a writer
-- that bypasses tenantq gets a REJECTED naming it instead of a double booking.)
CREATE TABLE IF NOT EXISTS booking (
    id        bigserial PRIMARY KEY,
    tenant_id text        NOT NULL,
    slot      timestamptz NOT NULL,
    customer  text        NOT NULL,
    booked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS booking_tenant_slot ON booking (tenant_id, slot);
