-- The workers now claim and settle on the delivery's day partition, with
-- the same statements as these functions (shared/src/db/deliveries/claims.rs):
-- a statement on the partitioned table opened and locked every partition
-- on every call, which cost more than the update once the retention keeps
-- a month of partitions. The functions stay, unchanged, for binaries of
-- earlier versions during a rolling upgrade.
COMMENT ON FUNCTION herald_claim_deliveries(timestamptz[], uuid[], boolean[], double precision, uuid[]) IS
    'Claims of binaries of earlier versions; current workers run the same statement on the day partition.';
COMMENT ON FUNCTION herald_settle_deliveries(timestamptz[], uuid[], text[], text[], text[], text[], boolean[], uuid[]) IS
    'Outcomes of binaries of earlier versions; current workers run the same statement on the day partition.';
