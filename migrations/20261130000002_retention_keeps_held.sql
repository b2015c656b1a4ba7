-- Retention never drops a delivery that is still held.
--
-- Deliveries are partitioned by the day their notification was accepted, and
-- retention drops whole days. A delivery held for `send_at` (up to a year
-- ahead) lives in the partition of its acceptance day, so dropping that day
-- after DELIVERY_RETENTION_DAYS silently dropped the delivery with it. Held
-- rows are exactly those keeping their rendered content (indexed by
-- `deliveries_held`), so the check is an index probe per partition. A day
-- kept for a held delivery is dropped by the first run after its last held
-- delivery was released.
CREATE OR REPLACE FUNCTION herald_drop_delivery_partitions(keep_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    held boolean;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'deliveries' AND c.relname ~ '^deliveries_[0-9]{8}$'
          AND to_date(substring(c.relname from 12), 'YYYYMMDD') < current_date - keep_days
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE rendered IS NOT NULL)', part.relname)
            INTO held;
        IF held THEN
            RAISE NOTICE 'keeping % past retention: it holds deliveries not yet due', part.relname;
            CONTINUE;
        END IF;
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
