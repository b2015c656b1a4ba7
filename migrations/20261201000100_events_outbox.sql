-- Delivery events: a transactional outbox written by the database itself.
--
-- Every status change a user can see is published on the `herald.events`
-- exchange (docs/events.md). The row that says so is written by a trigger in
-- the same transaction as the change, so no writer of `deliveries` (router,
-- workers, scheduler, replay, erasure, and whatever records receipts later)
-- can forget it and no crash can lose it; the router's relay publishes the
-- rows with confirms and deletes them.
--
-- The statuses that are NOT published are listed (the internal ones: a
-- delivery waiting to be sent, held, or claimed by a worker), so a status
-- added to `herald_delivery_status` later is published without a change here.
--
-- The row is small on purpose (ids, status, reason, attempts): everything
-- else an event carries (tenant, user, channel, destination, category) is
-- read by the relay from the delivery and its notification, off the
-- delivery path. What can change after the status change itself (reason,
-- error, attempts) is copied, so the event says what was true then.
CREATE TABLE event_outbox (
    -- Order of the changes, and the relay's cursor.
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The event's id, stable however often it is published: consumers
    -- de-duplicate on it.
    event_id    uuid NOT NULL DEFAULT gen_random_uuid(),
    -- The delivery's primary key (its partition key first).
    created_at  timestamptz NOT NULL,
    delivery_id uuid NOT NULL,
    status      text NOT NULL,
    reason      text,
    error_class text,
    error       text,
    attempts    integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
)
-- A queue table: rows live for a fraction of a second. Vacuumed after a
-- fixed number of dead rows rather than a fraction of a table that is
-- nearly always empty, so its pages are reused instead of growing.
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
      autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);

CREATE FUNCTION herald_record_delivery_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outbox (created_at, delivery_id, status, reason, error_class, error, attempts)
    VALUES (NEW.created_at, NEW.id, NEW.status, NEW.reason, NEW.error_class, NEW.last_error, NEW.attempts);
    RETURN NULL;
END $$;

-- Row triggers with a WHEN condition: a claim (`pending` -> `sending`) or a
-- batch of pending inserts never calls the function at all; the condition
-- is checked per row without leaving the executor. Declared on the
-- partitioned table, so every partition, present and future, has them.
CREATE TRIGGER deliveries_event_on_insert
    AFTER INSERT ON deliveries
    FOR EACH ROW
    WHEN (NEW.status NOT IN ('pending', 'deferred', 'sending'))
    EXECUTE FUNCTION herald_record_delivery_event();

CREATE TRIGGER deliveries_event_on_status
    AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status NOT IN ('pending', 'deferred', 'sending'))
    EXECUTE FUNCTION herald_record_delivery_event();
