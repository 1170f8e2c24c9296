-- The type-torture table: every type egress-dump writes as Parquet, with NULLs, empty
-- strings, NaN, ±Infinity, -0, the far ends of PostgreSQL's ranges (tests/dump/typed.rs,
-- bench/exactness.py).
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN money2 AS numeric(10,2);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE torture (
  id int PRIMARY KEY, b bool, i2 int2, i4 int4 NOT NULL, i8 int8, f4 float4, f8 float8,
  n10 numeric(10,2), n38 numeric(38,10), n76 numeric(76,20), nfree numeric, nneg numeric(5,-2),
  t text, vc varchar(10), c5 char(5), nm name, by bytea, u uuid, j json, jb jsonb,
  d date, ts timestamp, tstz timestamptz, tm time, ttz timetz, iv interval,
  e mood, dom posint, dnum money2, ai int[], at text[], an numeric(10,2)[], ad date[],
  ainet inet[], ae mood[], ip inet, cidr_ cidr, mac macaddr, mon money, bits bit(4), rng int4range,
  pt point, comp pair
);
INSERT INTO torture VALUES
 (1, true, -32768, -2147483648, -9223372036854775808, 'NaN', 'NaN',
  12345678.90, 1234567890123456789012345678.0123456789,
  12345678901234567890123456789012345678901234567890123456.01234567890123456789,
  12345678901234567890.123456789012345, 12300,
  '', '', 'ab', 'n', '\x', '00000000-0000-0000-0000-000000000000', '{"b":1,  "a":2}',
  '{"b": 1, "a": [1, 2.50]}',
  '0001-01-01', '4713-01-01 00:00:00 BC', '2024-06-30 23:59:59.123456+02', '24:00:00',
  '12:00:00+13', '-1 year -2 mons +3 days -04:05:06.000007',
  'sad', 1, -0.01, '{1,NULL,3}', '{"a,b","c\"d",NULL}', '{1.50,NULL}', '{2024-01-01,NULL}',
  '{10.0.0.1,NULL}', '{sad,NULL}', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 1234.56, B'1010',
  '[1,5)', '(1.2345678901234567,-2)', ROW(1, 'x,y')),
 (2, false, 32767, 2147483647, 9223372036854775807, 'Infinity', '-Infinity',
  -0.01, -0.0000000001, 0, 'NaN', -100,
  E'say "hi", ok\nline2\r\n', 'żółć 日本', 'abcde', 'a_name', '\xdeadbeef00',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]', '"just a string"',
  '4713-01-01 BC', '294246-12-31 23:59:59.999999', '1970-01-01 00:00:00+00', '00:00:00',
  '23:59:59.999999-15:59', '1 mon -1 day', 'happy', 2147483647, 99999999.99, '{}', '{}', '{}',
  '{}', '{{10.0.0.1},{::1}}', '{}', '::1', '::/0', 'ff:ff:ff:ff:ff:ff', -0.01, B'0000', 'empty', '(0,0)', ROW(NULL, NULL)),
 (3, NULL, NULL, 0, NULL, '-Infinity', '-0', NULL, NULL, NULL, 'Infinity', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null',
  '5874897-12-31', '2000-01-01', '294246-12-31 23:59:59.999999+00', '23:59:59.999999',
  NULL, '178000000 years', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, NULL, NULL, 1, NULL, '-0', 5e-324, NULL, NULL, NULL, '-Infinity', NULL,
  'unicode 🎉 é', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '1999-12-31', NULL, '0001-01-01 00:00:00+00', NULL, NULL, '0', NULL, NULL, NULL,
  '{NULL}', '{NULL}', NULL, NULL, NULL, '{NULL}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, NULL, NULL, 2, NULL, 3.4028235e38, 1.7976931348623157e308, NULL, NULL, NULL,
  '-0.000000000000000000000000000000000000000000000000000000000001', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL);
