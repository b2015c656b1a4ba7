-- Receipts (delivered, bounced, complained, undelivered) keep their reason
-- in `receipt_reason`, beside the send's own `reason`: the event of a
-- receipt status carries the receipt's reason (e.g. "twilio undelivered:
-- error 30003"), every other event the delivery's.
CREATE OR REPLACE FUNCTION herald_record_delivery_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outbox (created_at, delivery_id, status, reason, error_class, error, attempts)
    VALUES (NEW.created_at, NEW.id, NEW.status,
            CASE WHEN NEW.status IN ('delivered', 'bounced', 'complained', 'undelivered')
                 THEN COALESCE(NEW.receipt_reason, NEW.reason) ELSE NEW.reason END,
            NEW.error_class, NEW.last_error, NEW.attempts);
    RETURN NULL;
END $$;
