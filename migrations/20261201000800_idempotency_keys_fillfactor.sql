-- A key's record is written when its request commits and updated once,
-- milliseconds later, when the request's messages are confirmed
-- (`completed_at`). On full pages that update wrote a new version
-- elsewhere and an entry in both indexes: three updates in four, measured
-- during keyed single sends. With room left on each page the new version
-- stays beside the old one and no index is touched (a heap-only tuple),
-- since `completed_at` is in no index. Applies to pages filled from now on;
-- taking SHARE UPDATE EXCLUSIVE, it blocks neither reads nor writes.
ALTER TABLE idempotency_keys SET (fillfactor = 75);
