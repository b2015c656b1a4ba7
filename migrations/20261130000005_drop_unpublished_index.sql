-- no-transaction
-- Replaced by notifications_unrouted (previous migration). Dropped
-- concurrently, in a migration of its own for the same reason.
DROP INDEX CONCURRENTLY IF EXISTS notifications_unpublished;
