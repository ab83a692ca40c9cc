#!/usr/bin/env python3
"""An independent reader of a backfill's output (pyarrow, not adsproc's Parquet code): prints,
as one JSON object, every partition directory of every table under ROOT with its files, the run
each file's footer names (adsproc.run) and its rows, each as sorted-keys JSON, sorted.

    read_partitions.py ROOT                 a local directory
    read_partitions.py s3://BUCKET/PREFIX ENDPOINT   an S3 server (access key test/test)
"""
import json
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq

root = sys.argv[1]
if root.startswith("s3://"):
    fs = pafs.S3FileSystem(endpoint_override=sys.argv[2], scheme="http", access_key="test", secret_key="test", region="us-east-1")
    base = root[len("s3://"):].rstrip("/")
else:
    fs = pafs.LocalFileSystem()
    base = root.rstrip("/")

partitions = {}
for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
    if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
        continue
    rel = info.path[len(base):].strip("/").split("/")
    if len(rel) != 4 or rel[0].startswith("_"):
        continue
    table, dt, hr, name = rel
    meta = pq.read_metadata(info.path, filesystem=fs).metadata or {}
    rows = pq.read_table(info.path, filesystem=fs).to_pylist()
    partitions.setdefault(f"{table}/{dt}/{hr}", []).append({
        "file": name,
        "run": meta.get(b"adsproc.run", b"").decode(),
        "rows": sorted(json.dumps(r, sort_keys=True, default=str) for r in rows),
    })
print(json.dumps(partitions))
