-- Sample data for `weir demo`: a small shop whose customers table holds the kinds of PII
-- that Weir is there to protect. Every value is fake; card numbers are the networks' public
-- test numbers (Luhn-valid), SSNs use the never-issued 9xx area.
CREATE TABLE customers (
    id           serial PRIMARY KEY,
    full_name    text NOT NULL,
    email        text NOT NULL UNIQUE,
    phone        text,
    ssn          text,
    card_number  text,
    address      text,
    birth_date   date,
    notes        text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id           serial PRIMARY KEY,
    sku          text NOT NULL UNIQUE,
    name         text NOT NULL,
    price_cents  integer NOT NULL CHECK (price_cents > 0)
);

CREATE TABLE orders (
    id           serial PRIMARY KEY,
    customer_id  integer NOT NULL REFERENCES customers(id),
    product_id   integer NOT NULL REFERENCES products(id),
    quantity     integer NOT NULL CHECK (quantity > 0),
    total_cents  integer NOT NULL,
    status       text NOT NULL,
    ordered_at   timestamptz NOT NULL
);

INSERT INTO customers (full_name, email, phone, ssn, card_number, address, birth_date, notes)
SELECT f.name || ' ' || l.name,
       lower(f.name) || '.' || lower(l.name) || i || '@example.com',
       '+1-555-' || lpad((i % 10000)::text, 4, '0'),
       '9' || lpad((i % 100)::text, 2, '0') || '-' || lpad((i % 97 + 1)::text, 2, '0') || '-' || lpad((i * 37 % 10000)::text, 4, '0'),
       (ARRAY['4111111111111111', '5555555555554444', '378282246310005', '6011111111111117',
              '4012888888881881', '5105105105105100'])[1 + i % 6],
       (100 + i) || ' ' || (ARRAY['Oak', 'Maple', 'Cedar', 'Elm', 'Birch', 'Willow'])[1 + i % 6] || ' Street, Springfield',
       date '1950-01-01' + (i * 7919 % 20000),
       CASE WHEN i % 5 = 0 THEN 'Called support about a refund; prefers email.' END
FROM generate_series(1, 1000) AS i,
     LATERAL (SELECT (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Radia', 'Leslie'])[1 + i % 10] AS name) f,
     LATERAL (SELECT (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Perlman', 'Lamport', 'Ritchie'])[1 + i % 11] AS name) l;

INSERT INTO products (sku, name, price_cents)
SELECT 'SKU-' || lpad(i::text, 4, '0'),
       (ARRAY['Kettle', 'Lamp', 'Backpack', 'Notebook', 'Headphones', 'Mug', 'Chair', 'Desk'])[1 + i % 8] || ' model ' || i,
       500 + (i * 1237 % 20000)
FROM generate_series(1, 200) AS i;

INSERT INTO orders (customer_id, product_id, quantity, total_cents, status, ordered_at)
SELECT 1 + (i * 7 % 1000),
       1 + (i * 13 % 200),
       1 + i % 3,
       (1 + i % 3) * (500 + ((1 + (i * 13 % 200)) * 1237 % 20000)),
       (ARRAY['paid', 'shipped', 'delivered', 'refunded'])[1 + i % 4],
       now() - (i % 365) * interval '1 day'
FROM generate_series(1, 5000) AS i;

ANALYZE;
