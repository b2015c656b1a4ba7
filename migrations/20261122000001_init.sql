-- Herald's schema. Forward-only: every later migration must be safe to run
-- while the previous release still serves.

CREATE TABLE tenants (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    -- Categories (security, legal ...) that ignore recipients' opt-outs.
    required_categories text[] NOT NULL DEFAULT '{}',
    -- Per-user frequency caps: {"marketing": {"email": {"max": 2, "per_seconds": 86400}}}.
    frequency_caps      jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- SHA-256 of the whole key. Keys carry 256 random bits, so a fast hash is
    -- enough (no password stretching needed) and lookups stay one index probe.
    key_hash    bytea NOT NULL UNIQUE,
    -- First characters of the key, to tell keys apart in listings.
    key_prefix  text NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE users (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id         text NOT NULL,
    name       text,
    email      text,
    phone      text,
    locale     text,
    timezone   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE devices (
    tenant_id          text NOT NULL,
    user_id            text NOT NULL,
    token              text NOT NULL,
    platform           text NOT NULL CHECK (platform IN ('fcm', 'apns')),
    active             boolean NOT NULL DEFAULT true,
    deactivated_reason text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, token),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE preferences (
    tenant_id   text NOT NULL,
    user_id     text NOT NULL,
    preferences jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- Keyed (tenant, topic, user) so a topic's subscribers stream in pages by
-- keyset on user_id, never OFFSET.
CREATE TABLE topic_subscriptions (
    tenant_id  text NOT NULL,
    topic      text NOT NULL,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, topic, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE notifications (
    -- UUIDv7: time-ordered, so inserts append to the index.
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    category        text NOT NULL,
    priority        text NOT NULL CHECK (priority IN ('high', 'normal', 'bulk')),
    status          text NOT NULL DEFAULT 'accepted'
                    CHECK (status IN ('accepted', 'routing', 'routed', 'completed')),
    -- The validated request: recipients, channels, content, data, times.
    request         jsonb NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Set once the broker confirmed the routing message. Rows still NULL
    -- after a grace period are republished by the outbox relay.
    published_at    timestamptz,
    -- Topic fan-out checkpoint: the last subscriber id handed to the router.
    route_cursor    text,
    -- Topic fan-out: number of pages, set once every page was handed out.
    pages_total     integer,
    routed_at       timestamptz
);
CREATE INDEX notifications_unpublished ON notifications (created_at) WHERE published_at IS NULL;
CREATE INDEX notifications_tenant ON notifications (tenant_id, created_at);

CREATE TABLE idempotency_keys (
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key             text NOT NULL,
    -- SHA-256 of the canonical request body: same key + other body = 409.
    request_hash    bytea NOT NULL,
    response_status integer NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL while the first request is still making itself durable.
    completed_at    timestamptz,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Deliveries: one row per recipient x channel x destination. About 1B rows a
-- day at reference load, so the table is range-partitioned by day on the
-- notification's acceptance time (every delivery of one notification lands in
-- the same partition, so the fan-out key below can be unique), and retention
-- drops whole partitions instead of deleting rows (docs/schema.md).
CREATE TABLE deliveries (
    id              uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    notification_id uuid NOT NULL,
    tenant_id       text NOT NULL,
    user_id         text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('push', 'email', 'sms')),
    lane            text NOT NULL CHECK (lane IN ('high', 'normal', 'bulk')),
    -- Address, phone or device token; '' when there is none (suppressed).
    destination     text NOT NULL,
    platform        text,
    status          text NOT NULL CHECK (status IN
                    ('pending', 'deferred', 'sending', 'sent', 'failed', 'suppressed', 'expired', 'dead')),
    reason          text,
    attempts        integer NOT NULL DEFAULT 0,
    error_class     text,
    last_error      text,
    -- Rendered content for this recipient and channel.
    rendered        jsonb,
    not_before      timestamptz,
    expires_at      timestamptz,
    claimed_at      timestamptz,
    sent_at         timestamptz,
    provider_id     text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (created_at, id),
    -- The router's fan-out key: routing a notification again creates nothing new.
    UNIQUE (created_at, notification_id, user_id, channel, destination)
) PARTITION BY RANGE (created_at);
CREATE INDEX deliveries_notification ON deliveries (notification_id, id);
CREATE INDEX deliveries_deferred ON deliveries (not_before) WHERE status = 'deferred';

-- Rows whose day has no partition yet still land somewhere; partitions are
-- kept created ahead (herald_ensure_delivery_partitions) so this stays empty.
CREATE TABLE deliveries_default PARTITION OF deliveries DEFAULT;

CREATE FUNCTION herald_ensure_delivery_partitions(days_back integer, days_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    created integer := 0;
    name text;
BEGIN
    FOR d IN SELECT generate_series(current_date - days_back, current_date + days_ahead, interval '1 day')::date LOOP
        name := 'deliveries_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF deliveries FOR VALUES FROM (%L) TO (%L)',
                           name, to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',
                           to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

CREATE FUNCTION herald_drop_delivery_partitions(keep_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'deliveries' AND c.relname ~ '^deliveries_[0-9]{8}$'
          AND to_date(substring(c.relname from 12), 'YYYYMMDD') < current_date - keep_days
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT herald_ensure_delivery_partitions(1, 14);

-- Topic fan-out pages: one row per page of subscribers handed to the
-- router's queue; the notification is routed once every page is done.
CREATE TABLE route_pages (
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    last_user       text NOT NULL,
    done_at         timestamptz,
    PRIMARY KEY (notification_id, last_user)
);

-- Frequency-cap ledger: one row per user x category x channel x notification
-- that was (or will be) delivered. Keyed by notification so routing the same
-- notification again counts it once.
CREATE TABLE frequency_events (
    tenant_id       text NOT NULL,
    user_id         text NOT NULL,
    category        text NOT NULL,
    channel         text NOT NULL,
    notification_id uuid NOT NULL,
    at              timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id, category, channel, notification_id)
);
CREATE INDEX frequency_events_window ON frequency_events (tenant_id, user_id, category, channel, at);
CREATE INDEX frequency_events_at ON frequency_events (at);

-- Dead letters, moved here from the broker's dead-letter queue.
CREATE TABLE dead_letters (
    id              uuid PRIMARY KEY,
    -- Dedupe key of the broker message: archiving it twice stores it once.
    message_key     text NOT NULL UNIQUE,
    source          text NOT NULL,
    tenant_id       text,
    channel         text,
    lane            text,
    notification_id uuid,
    delivery_id     uuid,
    error_class     text NOT NULL,
    last_error      text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    exchange        text NOT NULL,
    routing_key     text NOT NULL,
    headers         jsonb NOT NULL,
    payload         bytea NOT NULL,
    failed_at       timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    replay_count    integer NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_filter ON dead_letters (tenant_id, channel, error_class, failed_at);
CREATE INDEX dead_letters_failed ON dead_letters (failed_at);
