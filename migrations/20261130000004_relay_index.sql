-- no-transaction
-- The relay looks for notifications still waiting for the router and never
-- confirmed by the broker: `status = 'accepted' AND published_at IS NULL`.
-- Ingest marks a notification published only if the router has not routed
-- it already (a second or so later, in batches), so in the common case a
-- notification is written twice (insert, routed) instead of three times,
-- and the old index on `published_at IS NULL` would have kept every routed
-- notification. Built concurrently (a migration of its own: CREATE INDEX
-- CONCURRENTLY cannot run inside a transaction) so writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_unrouted ON notifications (created_at)
    WHERE status = 'accepted' AND published_at IS NULL;
