-- Cache keys whose invalidation could not reach Redis when their write committed.
-- The write records its key here before it answers; every API pod reads this table
-- before extending the cache's trust token in Redis, applies what it finds (bumps
-- those keys' versions, starts a new token) and deletes it (service/cache.py).
CREATE TABLE cache_debt (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
