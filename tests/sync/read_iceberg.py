"""Read an egress Iceberg table with two independent readers and print what they see as JSON.

Usage: read_iceberg.py <spec.json>, the spec naming the table and what to read:
  {"metadata": "<metadata file URI>"}            pyiceberg StaticTable on that file
  {"sql": {"uri": ..., "name": ..., "table": "ns.t", "warehouse": ...}}  pyiceberg SqlCatalog
  "duckdb": "<table folder or metadata file>"    DuckDB 1.4.4 iceberg_scan (extensions from PyPI files)
  "s3": {"endpoint": ..., "key": ..., "secret": ...}  for s3:// tables
  "date": "YYYY-MM-DD"                           also return that day's rows (sorted by all columns)
  "snapshot": <id>                               read as of that snapshot (time travel)

Prints {"pyiceberg": {...}, "duckdb": {...}}: per reader the per-day row counts, the schema
(name: type, required), the snapshots (id, operation, egress.date) and the day's rows.
"""

import datetime
import decimal
import json
import os
import sys
import uuid

import duckdb
import pyarrow as pa


def plain(v):
    if isinstance(v, (datetime.date, datetime.datetime, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def rows_of(table: pa.Table):
    rows = [{k: plain(v) for k, v in r.items()} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def with_pyiceberg(spec):
    props = {}
    if "s3" in spec:
        props = {
            "s3.endpoint": spec["s3"]["endpoint"],
            "s3.access-key-id": spec["s3"]["key"],
            "s3.secret-access-key": spec["s3"]["secret"],
            "s3.region": "us-east-1",
            "s3.force-virtual-addressing": "false",
        }
    if "sql" in spec:
        from pyiceberg.catalog.sql import SqlCatalog

        sql = spec["sql"]
        catalog = SqlCatalog(sql["name"], uri=sql["uri"], **props)
        table = catalog.load_table(sql["table"])
    else:
        from pyiceberg.table import StaticTable

        table = StaticTable.from_metadata(spec["metadata"], properties=props)
    scan = table.scan(snapshot_id=spec.get("snapshot"))
    data = scan.to_arrow()
    counts = {}
    for d in data.column("egress_date").to_pylist():
        counts[d.isoformat()] = counts.get(d.isoformat(), 0) + 1
    schema = table.schema() if spec.get("snapshot") is None else table.scan(snapshot_id=spec["snapshot"]).projection()
    out = {
        "counts": counts,
        "schema": [[f.name, str(f.field_type), f.required] for f in schema.fields],
        "identifier": sorted(schema.identifier_field_names()),
        "snapshots": [
            [s.snapshot_id, s.summary.operation.value, (s.summary.additional_properties or {}).get("egress.date")]
            for s in sorted(table.snapshots(), key=lambda s: s.sequence_number)
        ],
        "current": table.current_snapshot().snapshot_id if table.current_snapshot() else None,
        "location": table.metadata_location,
    }
    if "date" in spec:
        day = data.filter(pa.compute.equal(data.column("egress_date"), pa.scalar(datetime.date.fromisoformat(spec["date"]))))
        out["rows"] = rows_of(day.drop_columns(["egress_date"]))
    return out


def with_duckdb(spec):
    ext = os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext", "extensions", "v1.4.4", "linux_amd64")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    # Offline: the avro extension first (the iceberg extension needs it), from its file.
    for name in ["avro", "httpfs", "iceberg"] if "s3" in spec else ["avro", "iceberg"]:
        con.execute(f"LOAD '{os.path.join(ext, name)}.duckdb_extension'")
    if "s3" in spec:
        s3 = spec["s3"]
        endpoint = s3["endpoint"].split("://", 1)[1]
        con.execute(
            f"CREATE SECRET (TYPE s3, KEY_ID '{s3['key']}', SECRET '{s3['secret']}', ENDPOINT '{endpoint}', "
            "URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
        )
    target = spec["duckdb"]
    options = ""
    if spec.get("snapshot") is not None:
        options = f", snapshot_from_id => {spec['snapshot']}"
    scan = f"iceberg_scan('{target}'{options})"
    counts = dict(
        (d.isoformat(), n)
        for d, n in con.execute(f"SELECT egress_date, count(*) FROM {scan} GROUP BY 1 ORDER BY 1").fetchall()
    )
    out = {"counts": counts}
    if "date" in spec:
        day = con.execute(f"SELECT * EXCLUDE (egress_date) FROM {scan} WHERE egress_date = DATE '{spec['date']}'").arrow()
        if not isinstance(day, pa.Table):
            day = day.read_all()
        out["rows"] = rows_of(day)
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    result = {}
    for name, reader in [("pyiceberg", with_pyiceberg), ("duckdb", with_duckdb)]:
        if name == "duckdb" and "duckdb" not in spec:
            continue
        try:
            result[name] = reader(spec)
        except Exception as e:  # the test prints it: which reader failed and why
            result[name] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
