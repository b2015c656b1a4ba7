-- The event outbox row carries what its event says of the delivery: tenant,
-- notification, user, channel and destination, copied from the changed row
-- by the trigger, which has them at hand.
--
-- The relay used to read them back from `deliveries` for every row it
-- published: a probe through the partitioned table per event, the largest
-- part of its read (docs/benchmarks.md). It now reads only the
-- notification's category, by primary key on an unpartitioned table. The
-- columns are NULL in rows an earlier version's trigger wrote (a rolling
-- upgrade); for those the relay still reads the delivery. A delivery whose
-- partition the retention dropped before its event was published now still
-- has its event.
ALTER TABLE event_outbox
    ADD COLUMN tenant_id       text,
    ADD COLUMN notification_id uuid,
    ADD COLUMN user_id         text,
    ADD COLUMN channel         text,
    ADD COLUMN destination     text;

CREATE OR REPLACE FUNCTION herald_record_delivery_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outbox (created_at, delivery_id, status, reason, error_class, error, attempts,
                              tenant_id, notification_id, user_id, channel, destination)
    VALUES (NEW.created_at, NEW.id, NEW.status,
            CASE WHEN NEW.status IN ('delivered', 'bounced', 'complained', 'undelivered')
                 THEN COALESCE(NEW.receipt_reason, NEW.reason) ELSE NEW.reason END,
            NEW.error_class, NEW.last_error, NEW.attempts,
            NEW.tenant_id, NEW.notification_id, NEW.user_id, NEW.channel, NEW.destination);
    RETURN NULL;
END $$;
