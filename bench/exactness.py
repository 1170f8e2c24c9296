#!/usr/bin/env python3
"""Which types each tool writes to Parquet exactly: the type-torture table of the tests
(tests/dump/torture.sql) dumped by egress-dump --format parquet and, column by column, by
DuckDB's postgres scanner (COPY (SELECT id, col FROM pg.public.torture) TO 'x.parquet');
each file read back with pyarrow and compared cell by cell with PostgreSQL's own values.
Prints a Markdown table. Usage (PG* variables set, the table loaded):

    exactness.py EGRESS_DUMP DUCKDB_POSTGRES_EXTENSION WORKDIR
"""
import json
import math
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "dump"))
import read_parquet  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def columns():
    path = os.path.join(ROOT, "tests", "dump", "torture_columns.tsv")
    return [l.rstrip("\n").split("\t")[:3] for l in open(path) if not l.startswith("#")]


def expected_sql(c, kind):
    """The same canonical forms as tests/dump/typed.rs."""
    c = f'"{c}"'
    scalar = lambda e: f"to_json(({e})::text)"
    forms = {
        "text": scalar(f"format('%s', {c})"),
        "bool": scalar(f"{c}::text"),
        "hex": scalar(f"encode({c}, 'hex')"),
        "uuid": scalar(f"replace({c}::text, '-', '')"),
        "days": scalar(f"{c} - date '1970-01-01'"),
        "micros": scalar(f"(extract(epoch from {c}) * 1000000)::numeric(40,0)"),
        "timetz": f"json_build_object('time', ((extract(epoch from {c}::time) * 1000000)::bigint)::text, "
        f"'offset_seconds', (extract(timezone from {c})::int)::text)",
        "interval": f"json_build_object('months', ((extract(year from {c}) * 12 + extract(month from {c}))::int)::text, "
        f"'days', (extract(day from {c})::int)::text, 'microseconds', ((extract(hour from {c}) * 3600000000 "
        f"+ extract(minute from {c}) * 60000000 + extract(microseconds from {c}))::bigint)::text)",
        "list": f"coalesce((SELECT json_agg(x::text ORDER BY o) FROM unnest({c}) WITH ORDINALITY u(x, o)), '[]')",
        "list-days": f"coalesce((SELECT json_agg((x - date '1970-01-01')::text ORDER BY o) FROM unnest({c}) WITH ORDINALITY u(x, o)), '[]')",
    }
    return f"(CASE WHEN num_nulls({c}) = 1 THEN 'null'::json ELSE {forms[kind]} END)::text"


def psql(sql):
    out = subprocess.run(["psql", "-X", "-At", "-F", "\x1f", "-c", sql], check=True, capture_output=True, text=True)
    return [line.split("\x1f") for line in out.stdout.splitlines()]


def same(column, kind, want, got):
    if want is None or got is None:
        return want is None and got is None
    if column in ("f4", "f8"):
        def bits(v):
            f = float(v.replace("Infinity", "inf"))
            if column == "f4":  # PostgreSQL prints a float4's shortest text: round it back
                f = struct.unpack("f", struct.pack("f", f))[0]
            return "nan" if math.isnan(f) else (f, math.copysign(1, f))
        return bits(want) == bits(got)
    if kind == "uuid":
        return want == got.replace("-", "")
    return want == got


def check(path, cols, want):
    """Per column: (Arrow type written, exact?) for the file at path."""
    schema, rows = read_parquet.rows("pyarrow", path)
    by_id = {r["id"]: r for r in rows}
    result = {}
    for name, kind, _ in cols:
        if name not in schema:
            continue
        exact = len(by_id) == len(want) and all(
            same(name, kind, want[i][name], by_id.get(i, {}).get(name, "<missing>")) for i in want
        )
        result[name] = (schema[name], exact)
    return result


def main():
    dump, extension, work = sys.argv[1:4]
    cols = columns()
    types = dict(psql("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                      "WHERE attrelid = 'torture'::regclass AND attnum > 0"))
    exprs = ", ".join(expected_sql(c, k) for c, k, _ in cols)
    want = {}
    for row in psql(f"SELECT {exprs} FROM torture"):
        cells = {c: json.loads(v) for (c, _, _), v in zip(cols, row)}
        want[cells["id"]] = cells

    out = os.path.join(work, "egress")
    subprocess.run([dump, "--tables", "torture", "--output", out, "--date", "2024-01-01",
                    "--format", "parquet", "--progress", "never"], check=True, capture_output=True)
    egress = check(os.path.join(out, "2024-01-01", "torture.parquet"), cols, want)

    import duckdb
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")
    dsn = f"host={os.environ['PGHOST']} port={os.environ['PGPORT']} user={os.environ['PGUSER']} dbname={os.environ['PGDATABASE']}"
    con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
    duck = {}
    for name, _, _ in cols[1:]:
        path = os.path.join(work, f"duck-{name}.parquet")
        try:
            sql = f"COPY (SELECT id, \"{name}\" FROM pg.public.torture) TO '{path}' (FORMAT parquet)"
            con.execute(sql)
        except Exception as e:  # DuckDB refused the column: say how
            duck[name] = ("aborts: " + str(e).splitlines()[0][:70], False)
            continue
        try:
            duck.update({k: v for k, v in check(path, cols, want).items() if k == name})
        except Exception as e:  # what DuckDB wrote cannot be read back
            duck[name] = ("unreadable: " + str(e).splitlines()[0][:70], False)

    print("| column | PostgreSQL type | egress-dump writes | exact | DuckDB 1.4.4 writes | exact |")
    print("|---|---|---|---|---|---|")
    for name, _, _ in cols[1:]:
        e, d = egress[name], duck[name]
        mark = lambda ok: "yes" if ok else "**no**"
        print(f"| {name} | {types[name]} | {e[0]} | {mark(e[1])} | {d[0]} | {mark(d[1])} |")
    exact = sum(1 for n, _, _ in cols[1:] if egress[n][1]), sum(1 for n, _, _ in cols[1:] if duck[n][1])
    print(f"\ncolumns written exactly: egress-dump {exact[0]} of {len(cols) - 1}, DuckDB {exact[1]} of {len(cols) - 1}")


main()
