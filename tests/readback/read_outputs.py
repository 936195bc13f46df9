#!/usr/bin/env python3
"""An independent reader of a tidemark output root, as a downstream user
would read it: DuckDB over the Redshift COPY manifests and over the
Hive-style folders, boto3 for S3 roots. Prints JSON counts for the Rust test
(tests/readback.rs) to compare with `tidemark inspect --json`.

usage: read_outputs.py ROOT      ROOT: a directory or s3://bucket/prefix
(S3: AWS_ENDPOINT_URL and credentials from the environment)
"""

import datetime
import glob
import json
import os
import sys
import tempfile

import duckdb


def fail(msg):
    print(f"read_outputs.py: {msg}", file=sys.stderr)
    sys.exit(1)


def mirror_s3(url):
    """Downloads every object under the root; returns (local dir, url->path)."""
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    local = tempfile.mkdtemp(prefix="tidemark-readback-")
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            path = os.path.join(local, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, obj["Key"], path)
    return local, lambda u: os.path.join(local, u[len(f"s3://{bucket}/{prefix}"):])


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    root = sys.argv[1]
    if root.startswith("s3://"):
        local, to_local = mirror_s3(root)
        url_prefix = root.rstrip("/") + "/"
    else:
        local = os.path.abspath(root)
        to_local = lambda u: u
        url_prefix = local + "/"

    # The public manifests: which transactions files each epoch committed.
    committed = {}
    for path in sorted(glob.glob(os.path.join(local, "manifests", "*.json"))):
        m = json.load(open(path))
        if m["format"] != "tidemark-manifest/1":
            fail(f"{path}: format {m['format']!r}")
        files = {f["path"]: f["bytes"] for f in m["files"] if f["output"] == "transactions"}
        if files:
            committed[m["epoch"]] = files

    # The Redshift COPY manifests: one per epoch with transactions, naming
    # exactly those files with their sizes.
    redshift_files = []
    seen_epochs = set()
    for path in sorted(glob.glob(os.path.join(local, "redshift", "*.manifest"))):
        epoch = int(os.path.basename(path).split(".")[0])
        seen_epochs.add(epoch)
        entries = json.load(open(path))["entries"]
        named = {}
        for e in entries:
            if e.get("mandatory") is not True:
                fail(f"{path}: entry not mandatory: {e}")
            url = e["url"]
            if not url.startswith(url_prefix):
                fail(f"{path}: url {url} is not under the root {url_prefix}")
            file = to_local(url)
            size = os.path.getsize(file)
            if size != e["meta"]["content_length"]:
                fail(f"{path}: {url} has {size} bytes, manifest says {e['meta']['content_length']}")
            named[url[len(url_prefix):]] = size
            redshift_files.append(file)
        if named != committed.get(epoch):
            fail(f"{path}: names {sorted(named)}, the epoch committed {sorted(committed.get(epoch, {}))}")
    if seen_epochs != set(committed):
        fail(f"Redshift manifests for epochs {sorted(seen_epochs)}, transactions in {sorted(committed)}")

    db = duckdb.connect()
    count = lambda sql, *args: db.execute(sql, list(args)).fetchall()[0][0]
    out = {"redshift_manifests": len(seen_epochs)}
    out["transactions_via_redshift"] = (
        count("select count(*) from read_parquet(?)", redshift_files)
        if redshift_files
        else 0
    )
    # Hive paths: date= and hour= are the UTC date and hour of event_time.
    rows = db.execute(
        f"""select date, hour, epoch_ms(event_time) from read_parquet(
              '{local}/transactions/*/*/*.parquet', hive_partitioning = true)"""
    ).fetchall()
    for date, hour, ms in rows:
        t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
        if (str(date), int(hour)) != (t.strftime("%Y-%m-%d"), t.hour):
            fail(f"row with event_time {t.isoformat()} under date={date}/hour={hour}")
    out["transactions_via_hive"] = len(rows)
    out["windows"] = count(
        f"""select count(*) from read_parquet('{local}/windows/*/*.parquet', hive_partitioning = true)
            where "window" is not null"""
    )
    mismatched = count(
        f"""select count(*) from read_parquet('{local}/windows/*/*.parquet', filename = true)
            where filename not like '%/window=' || "window" || '/%'"""
    )
    if mismatched:
        fail(f"{mismatched} window rows outside their window= folder")
    for name in ["anomalies", "rejects"]:
        files = glob.glob(f"{local}/{name}/*.parquet")
        out[name] = count("select count(*) from read_parquet(?)", files) if files else 0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
