#!/usr/bin/env python3
"""Compare two S3 prefixes object by object (bytes), for the benchmark's identity check.

usage: compare.py SRC_ENDPOINT SRC_KEY SRC_SECRET SRC_BUCKET DST_ENDPOINT DST_KEY DST_SECRET DST_BUCKET
Exits 1 and names the first differences when the sets of keys or any object's bytes differ.
"""
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

IGNORED = (".egress-sync-state.json",)


def client(endpoint, key, secret):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def digest(c, bucket, key):
    h = hashlib.sha256()
    for chunk in c.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        h.update(chunk)
    return key, h.hexdigest()


def digests(c, bucket):
    keys = [
        o["Key"]
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
        if not o["Key"].endswith(IGNORED)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(lambda k: digest(c, bucket, k), keys))


def main():
    a = digests(client(*sys.argv[1:4]), sys.argv[4])
    b = digests(client(*sys.argv[5:8]), sys.argv[8])
    problems = sorted(set(a) ^ set(b))[:5] + [k for k in sorted(set(a) & set(b)) if a[k] != b[k]][:5]
    if problems:
        print(f"MISMATCH {sys.argv[4]} vs {sys.argv[8]}: {problems}", file=sys.stderr)
        sys.exit(1)
    print(f"identical: {len(a)} objects")


if __name__ == "__main__":
    main()
