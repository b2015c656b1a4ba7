-- Provider receipts: what happened after the provider accepted a delivery.
--
-- The status domain grows by the four receipt statuses. The constraint is
-- added NOT VALID: the new set contains the old one, so rows already stored
-- need no check, and a full scan of a billion-row-a-day table while the old
-- release serves is exactly what a migration must not do. New values are
-- checked all the same.
ALTER DOMAIN herald_delivery_status DROP CONSTRAINT herald_delivery_status_check;
ALTER DOMAIN herald_delivery_status ADD CONSTRAINT herald_delivery_status_check
    CHECK (VALUE IN ('pending', 'deferred', 'sending', 'sent', 'failed', 'suppressed', 'expired', 'dead',
                     'delivered', 'bounced', 'complained', 'undelivered')) NOT VALID;

-- When the receipt that settled the delivery arrived, and what it said
-- (bounce reason, carrier error code). Nullable without a default: adding
-- them rewrites nothing.
ALTER TABLE deliveries
    ADD COLUMN receipt_at timestamptz,
    ADD COLUMN receipt_reason text;

-- Every receipt accepted, keyed by the provider's event id: a callback the
-- provider sends again (or an attacker replays) finds its key taken and
-- changes nothing. Kept 30 days (ingest's housekeeping), longer than any
-- provider retries a callback.
CREATE TABLE receipts (
    provider            text NOT NULL,
    event_id            text NOT NULL,
    -- The provider's name for what happened (`delivered`, `bounce`, ...).
    event               text NOT NULL,
    tenant_id           text,
    delivery_created_at timestamptz,
    delivery_id         uuid,
    -- The status it moved the delivery to; NULL when it changed none (an
    -- intermediate status, an unsubscribe, a delivery already settled
    -- otherwise, a push token the provider no longer knows).
    status              text,
    reason              text,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX receipts_received ON receipts (received_at);
