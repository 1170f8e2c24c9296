#!/usr/bin/env python3
"""DuckDB's own way to a Parquet file from PostgreSQL, as a user would run it: the postgres
extension (loaded from its file: offline), the database attached read-only, one COPY with
DuckDB's defaults. Usage: duckdb_copy.py EXTENSION DSN TABLE OUT.parquet"""
import sys

import duckdb

extension, dsn, table, out = sys.argv[1:5]
con = duckdb.connect()
con.execute(f"LOAD '{extension}'")
con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
con.execute(f"COPY (FROM pg.public.{table}) TO '{out}'")
