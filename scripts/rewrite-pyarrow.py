#!/usr/bin/env python3
"""Rewrites every Parquet file of an archive with pyarrow's default writer settings.

    scripts/rewrite-pyarrow.py SRC DEST

The benchmarks measure adsproc on archives as other producers write them too, not only on its
own writer's files: pyarrow's defaults (snappy, dictionary pages, one row group of up to a
million rows per file, page statistics) are what a Python job archiving the topics writes.
The directory layout (topic/date=/hour=/file) is kept; other files are copied as they are.
"""
import os
import shutil
import sys

import pyarrow.parquet as pq

src, dest = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(src):
    out = os.path.join(dest, os.path.relpath(root, src))
    os.makedirs(out, exist_ok=True)
    for name in files:
        if name.endswith(".parquet"):
            pq.write_table(pq.read_table(os.path.join(root, name)), os.path.join(out, name))
        else:
            shutil.copy(os.path.join(root, name), os.path.join(out, name))
