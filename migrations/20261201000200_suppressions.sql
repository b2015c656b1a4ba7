-- Per-tenant suppression list: addresses of a channel that must not be tried
-- again (a hard bounce, a spam complaint, an SMS recipient who replied STOP,
-- or an operator's hand). The router reads it with the recipients of each
-- batch (one correlated probe of this primary key per recipient and
-- channel), so the key is exactly what it looks up.
--
-- Addresses are stored as deliveries store them: emails trimmed and
-- lower-cased, phones in E.164. Push has no entry here: an unregistered
-- device token is deactivated on the device itself.
CREATE TABLE suppressions (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel IN ('email', 'sms')),
    address     text NOT NULL CHECK (address <> ''),
    reason      text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribed', 'manual')),
    -- Who added it: `api`, `heraldctl`, or the provider whose
    -- receipt did (`twilio`, `sendgrid`).
    source      text NOT NULL,
    -- The provider's words (bounce message, error code) or the operator's note.
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel, address)
);
