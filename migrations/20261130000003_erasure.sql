-- Erasing a user (`DELETE /v1/users/{id}`) reaches their addresses and
-- content in stored deliveries and dead letters, not only the users table.
--
-- Deliveries by recipient: the index is declared on the partitioned table
-- only (`ON ONLY`: instant, no partition is scanned or locked). Partitions
-- created from now on get it automatically; `heraldctl migrate` builds it on
-- existing partitions with CREATE INDEX CONCURRENTLY (which cannot run in a
-- migration's transaction) and attaches each one, so no write is blocked
-- while a day's partition of a billion rows is indexed.
CREATE INDEX IF NOT EXISTS deliveries_user ON ONLY deliveries (tenant_id, user_id);

-- Dead letters by recipient: the archiver records the user of a delivery.
ALTER TABLE dead_letters ADD COLUMN user_id text;
CREATE INDEX dead_letters_user ON dead_letters (tenant_id, user_id) WHERE user_id IS NOT NULL;

-- Existing delivery dead letters learn their user from their payload; a
-- payload that is not JSON is left alone.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id, payload FROM dead_letters WHERE delivery_id IS NOT NULL LOOP
        BEGIN
            UPDATE dead_letters
               SET user_id = convert_from(r.payload, 'UTF8')::jsonb ->> 'user_id'
             WHERE id = r.id;
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END $$;
