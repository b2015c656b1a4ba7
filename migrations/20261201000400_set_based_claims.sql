-- The workers' claims and outcomes as one statement per batch.
--
-- The previous bodies looped over the batch and updated one row per
-- iteration, each a generic plan over the partitioned table: every row paid
-- the executor's start-up over all the delivery partitions (locks, result
-- relations, pruning): the largest share of PostgreSQL's CPU on the
-- one-recipient path. Now a batch is one UPDATE joined to the unnested
-- arrays. Claim and outcome of one delivery, batches of 50, on the reference
-- machine: 54 us together instead of 133.
--
-- The plan is made once per connection, as before, and must stay a nested
-- loop over the batch that probes each row in its own partition (run-time
-- pruning). Left to the statistics, a plan made while the partitions were
-- empty (a new deployment, or the first calls of the day) used a hash join
-- over sequential scans and kept reading whole partitions as they grew:
-- the end-to-end benchmark's latency at half load went from 46 to 174 ms at
-- the median. So the functions turn hash joins, merge joins and sequential
-- scans off for their own statements. A custom plan per call was measured
-- too: planning over every partition cost more than the loop it replaces.
--
-- The reason given for the loop (migration ..._delivery_batches.sql) does
-- not hold: a per-row statement chooses between the same two indexes, the
-- primary key and the fan-out key (created_at, notification_id, ...), from
-- the same statistics. Measured on PostgreSQL 15 with statistics that think
-- `created_at` unique and 100,000 deliveries of one topic sharing one
-- `created_at`: the per-row statement and the joined one both probed the
-- fan-out key and read the whole topic (27-29 ms per row). Up-to-date
-- statistics (a topic's `created_at` among the most common values) make
-- both pick the primary key.
--
-- Same signatures, same answers: claims answer one row per input, in input
-- order (the caller passes each delivery once); an outcome applies only
-- while its row is `sending` under the claim's token, and of one delivery
-- named twice in a batch the first outcome is the one applied, as the loop
-- did. Binaries of the previous version call the same functions.

CREATE OR REPLACE FUNCTION herald_claim_deliveries(
    created timestamptz[], ids uuid[], redelivered boolean[], lease_secs double precision,
    tokens uuid[])
RETURNS TABLE (claimed boolean, attempts integer, status text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH req AS (
        SELECT r.created, r.id, r.redelivered, r.token, r.n
          FROM unnest(created, ids, redelivered, tokens)
               WITH ORDINALITY AS r(created, id, redelivered, token, n)
    ), took AS (
        UPDATE deliveries d
           SET status = 'sending',
               -- Our own claim, retried after a lost answer, counts once.
               attempts = d.attempts + CASE WHEN d.status = 'sending' AND d.claim_token = req.token
                                            THEN 0 ELSE 1 END,
               claim_token = req.token, claimed_at = now(), updated_at = now()
          FROM req
         WHERE d.created_at = req.created AND d.id = req.id
           AND (d.status = 'pending'
                OR (d.status = 'sending'
                    AND (req.redelivered OR d.claim_token = req.token
                         OR d.claimed_at < now() - make_interval(secs => lease_secs))))
        RETURNING req.n, d.attempts, d.status
    )
    SELECT took.n IS NOT NULL, COALESCE(took.attempts, cur.attempts),
           COALESCE(took.status, cur.status)::text
      FROM req
      LEFT JOIN took ON took.n = req.n
      -- A row not claimed: how it stands (the statement's snapshot, which
      -- the claims above do not change).
      LEFT JOIN LATERAL (
          SELECT d.attempts, d.status FROM deliveries d
           WHERE took.n IS NULL AND d.created_at = req.created AND d.id = req.id) cur ON true
     ORDER BY req.n;
END $$;

CREATE OR REPLACE FUNCTION herald_settle_deliveries(
    created timestamptz[], ids uuid[], statuses text[], classes text[], errors text[],
    provider_ids text[], refunds boolean[], tokens uuid[])
RETURNS integer
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
DECLARE
    recorded integer;
BEGIN
    WITH req AS (
        SELECT DISTINCT ON (r.created, r.id) r.*
          FROM unnest(created, ids, statuses, classes, errors, provider_ids, refunds, tokens)
               WITH ORDINALITY AS r(created, id, status, class, error, provider_id, refund, token, n)
         ORDER BY r.created, r.id, r.n
    ), done AS (
        UPDATE deliveries d
           SET status = req.status,
               error_class = COALESCE(req.class, d.error_class),
               last_error = COALESCE(req.error, d.last_error),
               provider_id = COALESCE(req.provider_id, d.provider_id),
               sent_at = CASE WHEN req.status = 'sent' THEN now() ELSE d.sent_at END,
               attempts = d.attempts - CASE WHEN req.refund THEN 1 ELSE 0 END,
               reason = CASE WHEN req.status = 'expired' THEN req.error ELSE d.reason END,
               updated_at = now()
          FROM req
         WHERE d.created_at = req.created AND d.id = req.id
           AND d.status = 'sending' AND d.claim_token = req.token
        RETURNING 1
    )
    SELECT count(*) INTO recorded FROM done;
    RETURN recorded;
END $$;
