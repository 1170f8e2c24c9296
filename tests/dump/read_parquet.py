"""Read a Parquet file with pyarrow or DuckDB and print each row as JSON, every value in a
canonical text form the end-to-end test compares with PostgreSQL's own values:
integers, decimals and booleans as their text, floats as Python's repr, bytes as hex,
dates as days since 1970, timestamps and times as microseconds, structs as objects and
lists as arrays. Usage: read_parquet.py pyarrow|duckdb FILE."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def plain(t):
    """The type to cast to so that values come out as integers, not Python dates."""
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    if isinstance(t, pa.ExtensionType):
        return plain(t.storage_type)
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(plain(t.value_type))
    return t


def canonical(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if hasattr(value, "as_tuple"):  # decimal.Decimal, without exponent notation
        return format(value, "f")
    if hasattr(value, "hex") and hasattr(value, "bytes"):  # uuid.UUID
        return value.bytes.hex()
    return str(value)


def read(reader, path):
    if reader == "pyarrow":
        return pq.read_table(path)
    import duckdb

    return duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetch_arrow_table()


def rows(reader, path):
    """The file's schema (column -> Arrow type) and its rows, each value canonical."""
    table = read(reader, path)
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        column = column.combine_chunks() if column.num_chunks else column
        if isinstance(column.type, pa.ExtensionType):
            column = column.storage
        columns[name] = column.cast(plain(column.type)).to_pylist()
    schema = {f.name: str(f.type) for f in table.schema}
    values = [
        {name: canonical(values[i]) for name, values in columns.items()}
        for i in range(table.num_rows)
    ]
    return schema, values


def main():
    schema, values = rows(sys.argv[1], sys.argv[2])
    print(json.dumps({"schema": schema}))
    for row in values:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
