-- The catalog. Limits mirror service/items/schemas.py so the database refuses
-- what the API would refuse, whoever writes to it.
CREATE TABLE items (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text        NOT NULL UNIQUE CHECK (char_length(sku) BETWEEN 1 AND 64),
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    category    text        NOT NULL CHECK (char_length(category) BETWEEN 1 AND 100),
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    stock       integer     NOT NULL CHECK (stock >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
