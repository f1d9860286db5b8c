-- The demo shop (demo_seed.sql) in MySQL syntax, smaller: 300 customers, 50 products,
-- 1000 orders; the same columns and the same kinds of values. Used by `weir demo` and the
-- MySQL tests.
CREATE DATABASE shop;
USE shop;
CREATE TABLE customers (
    id           int AUTO_INCREMENT PRIMARY KEY,
    full_name    varchar(200) NOT NULL,
    email        varchar(255) NOT NULL UNIQUE,
    phone        varchar(50),
    ssn          varchar(20),
    card_number  varchar(30),
    address      text,
    birth_date   date,
    notes        text,
    created_at   timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE products (
    id           int AUTO_INCREMENT PRIMARY KEY,
    sku          varchar(20) NOT NULL UNIQUE,
    name         varchar(200) NOT NULL,
    price_cents  int NOT NULL CHECK (price_cents > 0)
);
CREATE TABLE orders (
    id           int AUTO_INCREMENT PRIMARY KEY,
    customer_id  int NOT NULL,
    product_id   int NOT NULL,
    quantity     int NOT NULL CHECK (quantity > 0),
    total_cents  int NOT NULL,
    status       varchar(20) NOT NULL,
    ordered_at   datetime NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customers(id),
    FOREIGN KEY (product_id) REFERENCES products(id)
);

INSERT INTO customers (full_name, email, phone, ssn, card_number, address, birth_date, notes)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300),
n AS (SELECT i,
             ELT(1 + i % 10, 'Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Radia', 'Leslie') AS f,
             ELT(1 + i % 11, 'Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Perlman', 'Lamport', 'Ritchie') AS l
      FROM s)
SELECT CONCAT(f, ' ', l),
       CONCAT(LOWER(f), '.', LOWER(l), i, '@example.com'),
       CONCAT('+1-555-', LPAD(i % 10000, 4, '0')),
       CONCAT('9', LPAD(i % 100, 2, '0'), '-', LPAD(i % 97 + 1, 2, '0'), '-', LPAD(i * 37 % 10000, 4, '0')),
       ELT(1 + i % 6, '4111111111111111', '5555555555554444', '378282246310005', '6011111111111117',
           '4012888888881881', '5105105105105100'),
       CONCAT(100 + i, ' ', ELT(1 + i % 6, 'Oak', 'Maple', 'Cedar', 'Elm', 'Birch', 'Willow'), ' Street, Springfield'),
       DATE_ADD('1950-01-01', INTERVAL (i * 7919 % 20000) DAY),
       CASE WHEN i % 5 = 0 THEN 'Called support about a refund; prefers email.' END
FROM n ORDER BY i;

INSERT INTO products (sku, name, price_cents)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
SELECT CONCAT('SKU-', LPAD(i, 4, '0')),
       CONCAT(ELT(1 + i % 8, 'Kettle', 'Lamp', 'Backpack', 'Notebook', 'Headphones', 'Mug', 'Chair', 'Desk'), ' model ', i),
       500 + (i * 1237 % 20000)
FROM s ORDER BY i;

INSERT INTO orders (customer_id, product_id, quantity, total_cents, status, ordered_at)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000)
SELECT 1 + (i * 7 % 300),
       1 + (i * 13 % 50),
       1 + i % 3,
       (1 + i % 3) * (500 + ((1 + (i * 13 % 50)) * 1237 % 20000)),
       ELT(1 + i % 4, 'paid', 'shipped', 'delivered', 'refunded'),
       NOW() - INTERVAL (i % 365) DAY
FROM s ORDER BY i;

ANALYZE TABLE customers, products, orders;
