-- Claims carry a token, and outcomes are recorded only by the claim's holder.
--
-- A claim or an outcome whose commit succeeded while the answer was lost
-- (the connection broke after COMMIT) is retried by the worker that holds
-- the message. Without a token the retried claim found the row `sending`,
-- took it for another worker's, and the message was acked with the row
-- stranded; a retried throttle outcome refunded the attempt twice; and a
-- worker whose claim had been taken over could overwrite the newer holder's
-- outcome. With the token, a retried claim recognises its own claim (and
-- counts the attempt once), and an outcome applies only while the row is
-- still `sending` under the same token.
--
-- Expand step: the column is added (nullable, no default: a catalogue change
-- only) and the functions get overloads with a token argument. The previous
-- overloads stay for binaries of the previous version during a rollout.

ALTER TABLE deliveries ADD COLUMN claim_token uuid;

CREATE FUNCTION herald_claim_deliveries(
    created timestamptz[], ids uuid[], redelivered boolean[], lease_secs double precision,
    tokens uuid[])
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
           SET status = 'sending',
               -- Our own claim, retried after a lost answer, counts once.
               attempts = d.attempts + CASE WHEN d.status = 'sending' AND d.claim_token = tokens[i]
                                            THEN 0 ELSE 1 END,
               claim_token = tokens[i], claimed_at = now(), updated_at = now()
         WHERE d.created_at = created[i] AND d.id = ids[i]
           AND (d.status = 'pending'
                OR (d.status = 'sending'
                    AND (redelivered[i] OR d.claim_token = tokens[i]
                         OR d.claimed_at < now() - make_interval(secs => lease_secs))))
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

-- Records a batch of outcomes, each only while its row is still `sending`
-- under the claim's token; answers how many were recorded.
CREATE FUNCTION herald_settle_deliveries(
    created timestamptz[], ids uuid[], statuses text[], classes text[], errors text[],
    provider_ids text[], refunds boolean[], tokens uuid[])
RETURNS integer
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    i integer;
    recorded integer := 0;
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
         WHERE d.created_at = created[i] AND d.id = ids[i]
           AND d.status = 'sending' AND d.claim_token = tokens[i];
        IF FOUND THEN
            recorded := recorded + 1;
        END IF;
    END LOOP;
    RETURN recorded;
END $$;
