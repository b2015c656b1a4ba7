-- The workers' two writes per delivery, the claim and the outcome, as
-- functions that take a whole batch and update it row by row.
--
-- Why not one `UPDATE ... FROM UNNEST(...)`: every delivery of a notification
-- shares its `created_at` (the partition key), and the planner cannot see
-- that the batch names a few rows out of those. Whether it probes the
-- primary key per row or reads every delivery with that `created_at` then
-- hinges on column statistics, which lag far behind a day partition that a
-- million-subscriber topic fills in a minute; the wrong choice makes each
-- batch read the whole fan-out. Here every row is a full-key equality on the
-- primary key, which the planner always answers with one index probe
-- (statistics cannot change that), and the plan is made once per connection
-- and reused, with partitions pruned as each row executes.

-- Claims a batch before the provider calls. Answers one row per input row,
-- in order: claimed (with the attempt count including this one), or not
-- claimed with the delivery's status (NULL when there is no such delivery).
-- A `sending` row is taken over only when the broker redelivered the message
-- or the claim's lease ran out. Callers pass each delivery once per batch.
CREATE FUNCTION herald_claim_deliveries(
    created timestamptz[], ids uuid[], redelivered boolean[], lease_secs double precision)
RETURNS TABLE (claimed boolean, attempts integer, status text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
        claimed := true;
        UPDATE deliveries d
           SET status = 'sending', attempts = d.attempts + 1, claimed_at = now(), updated_at = now()
         WHERE d.created_at = created[i] AND d.id = ids[i]
           AND (d.status = 'pending'
                OR (d.status = 'sending'
                    AND (redelivered[i] OR d.claimed_at < now() - make_interval(secs => lease_secs))))
        RETURNING d.attempts, d.status INTO attempts, status;
        IF NOT FOUND THEN
            claimed := false;
            attempts := NULL;
            status := NULL;
            SELECT d.attempts, d.status INTO attempts, status
              FROM deliveries d WHERE d.created_at = created[i] AND d.id = ids[i];
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

-- Records a batch of outcomes. `statuses` is the new status; `classes`,
-- `errors` and `provider_ids` overwrite only where given; `refunds` un-counts
-- the attempt (a throttle is not the delivery's fault).
CREATE FUNCTION herald_settle_deliveries(
    created timestamptz[], ids uuid[], statuses text[], classes text[], errors text[],
    provider_ids text[], refunds boolean[])
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
        UPDATE deliveries d
           SET status = statuses[i],
               error_class = COALESCE(classes[i], d.error_class),
               last_error = COALESCE(errors[i], d.last_error),
               provider_id = COALESCE(provider_ids[i], d.provider_id),
               sent_at = CASE WHEN statuses[i] = 'sent' THEN now() ELSE d.sent_at END,
               attempts = d.attempts - CASE WHEN refunds[i] THEN 1 ELSE 0 END,
               reason = CASE WHEN statuses[i] = 'expired' THEN errors[i] ELSE d.reason END,
               updated_at = now()
         WHERE d.created_at = created[i] AND d.id = ids[i];
    END LOOP;
END $$;

-- Room for the workers' updates to stay on the row's page. A delivery is
-- updated twice within seconds of its insert (claim, outcome); when the new
-- version fits on the same page and no indexed column changes, PostgreSQL
-- writes no index entries for it (a heap-only tuple). That needs free space
-- on the page, hence fillfactor, and indexes whose columns and predicates
-- the workers never touch, hence the held-deliveries index below.
CREATE OR REPLACE FUNCTION herald_ensure_delivery_partitions(days_back integer, days_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    created integer := 0;
    name text;
BEGIN
    FOR d IN SELECT generate_series(current_date - days_back, current_date + days_ahead, interval '1 day')::date LOOP
        name := 'deliveries_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF deliveries FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 75)',
                           name, to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',
                           to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'deliveries'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %I SET (fillfactor = 75)', part.relname);
    END LOOP;
END $$;

-- Held deliveries are exactly those that still keep their rendered content:
-- the scheduler clears it when it releases them (the broker message carries
-- it from then on). The old index's predicate named `status`, which every
-- claim and outcome changes, and that alone kept all their updates from
-- being heap-only.
UPDATE deliveries SET rendered = NULL WHERE status <> 'deferred' AND rendered IS NOT NULL;
DROP INDEX deliveries_deferred;
CREATE INDEX deliveries_held ON deliveries (not_before) WHERE rendered IS NOT NULL;

-- The value checks of the columns the workers write move from table CHECK
-- constraints to domains. PostgreSQL evaluates every CHECK of a table on
-- every update, whichever columns changed, and re-reads each one's stored
-- expression for every statement; with one statement per row that was a
-- fifth of the database's time per delivery. A domain's check runs only
-- where a value is assigned to the column, from an expression cached once
-- per connection. The values allowed are unchanged. The domains are created
-- bare and constrained afterwards so that existing rows are checked in place
-- instead of the table being rewritten.
CREATE DOMAIN herald_channel AS text;
CREATE DOMAIN herald_lane AS text;
CREATE DOMAIN herald_delivery_status AS text;
ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_channel_check,
    DROP CONSTRAINT deliveries_lane_check,
    DROP CONSTRAINT deliveries_status_check,
    ALTER COLUMN channel TYPE herald_channel,
    ALTER COLUMN lane TYPE herald_lane,
    ALTER COLUMN status TYPE herald_delivery_status;
ALTER DOMAIN herald_channel ADD CONSTRAINT herald_channel_check
    CHECK (VALUE IN ('push', 'email', 'sms'));
ALTER DOMAIN herald_lane ADD CONSTRAINT herald_lane_check
    CHECK (VALUE IN ('high', 'normal', 'bulk'));
ALTER DOMAIN herald_delivery_status ADD CONSTRAINT herald_delivery_status_check
    CHECK (VALUE IN ('pending', 'deferred', 'sending', 'sent', 'failed', 'suppressed', 'expired', 'dead'));
