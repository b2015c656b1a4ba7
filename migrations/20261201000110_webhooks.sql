-- Webhook endpoints (PRODUCT.md, "Webhooks"): where a tenant wants its
-- delivery events sent, signed per Standard Webhooks.
--
-- The signing secret is stored as issued: Herald must sign with it, so it
-- cannot be kept as a hash the way API keys are. During a rotation's overlap
-- the previous secret signs too, until `previous_until`.
CREATE TABLE webhooks (
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id              text NOT NULL,
    url             text NOT NULL,
    -- Filters `{channel}.{status}`, either part may be `*`.
    events          text[] NOT NULL,
    secret          text NOT NULL,
    previous_secret text,
    previous_until  timestamptz,
    -- First failure of the current run of failures; NULL after a success.
    failing_since   timestamptz,
    -- Set when the endpoint kept failing for WEBHOOK_DISABLE_AFTER; a PUT
    -- of the endpoint enables it again.
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
