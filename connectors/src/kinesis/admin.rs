//! Producer and admin helpers: PutRecord(s), CreateStream, SplitShard,
//! MergeShards. For tests, examples and tools only (the job never writes to
//! Kinesis or changes a stream); they retry a little and block.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;

use super::backoff::{seed_from, Backoff};
use super::client::{classify, ApiError, KinesisClient};
use super::shards::cmp_sequence;

/// Puts one record; returns `(shard id, sequence number)`. `explicit_hash_key`
/// picks the shard (whose hash key range contains it); `after` is the
/// previous record's sequence number (SequenceNumberForOrdering).
pub fn put_record(
    client: &KinesisClient,
    stream: &str,
    partition_key: &str,
    explicit_hash_key: Option<u128>,
    data: &[u8],
    after: Option<&str>,
) -> Result<(String, String)> {
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(2),
        seed_from(partition_key),
    );
    let mut ordering = after.map(str::to_owned);
    loop {
        let mut req = client
            .sdk()
            .put_record()
            .stream_name(stream)
            .partition_key(partition_key)
            .data(Blob::new(data));
        if let Some(h) = explicit_hash_key {
            req = req.explicit_hash_key(h.to_string());
        }
        if let Some(s) = &ordering {
            req = req.sequence_number_for_ordering(s);
        }
        match client.block_on(req.send()) {
            Ok(out) => return Ok((out.shard_id().to_owned(), out.sequence_number().to_owned())),
            Err(e) => match classify(&e) {
                ApiError::Throttled(m) | ApiError::Transient(m) if backoff.attempts() < 10 => {
                    tracing::debug!("kinesis: PutRecord {stream}: {m} (retrying)");
                    std::thread::sleep(backoff.next_delay());
                }
                // kinesalite refuses, for about a second after a resharding,
                // a new shard's sequence number as "in the future": records
                // of one caller are ordered anyway (each put waits for the
                // previous one), so put it without.
                ApiError::InvalidArgument(m)
                    if ordering.is_some() && m.contains("ExclusiveMinimumSequenceNumber") =>
                {
                    ordering = None;
                }
                err => bail!("Kinesis PutRecord to stream {stream}: {}", err.message()),
            },
        }
    }
}

/// Puts `lines` in order to the shard whose hash key range contains
/// `shard_hash_key`, up to 500 per PutRecords call, each call after the
/// previous one is acknowledged; returns their sequence numbers. A call with
/// any failed record is an error (retrying only the failed ones would put
/// them after records that followed them). Faster than
/// [`put_records_to_shard`]; PutRecords keeps a request's order on
/// kinesalite and in practice on AWS, which only PutRecord promises.
pub fn put_lines_batched(
    client: &KinesisClient,
    stream: &str,
    shard_hash_key: u128,
    lines: &[&[u8]],
) -> Result<Vec<String>> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let key = format!("tidemark-{shard_hash_key}");
    let mut seqs: Vec<String> = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(500) {
        let entries = chunk
            .iter()
            .map(|l| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(*l))
                    .partition_key(&key)
                    .explicit_hash_key(shard_hash_key.to_string())
                    .build()
                    .map_err(|e| anyhow!("PutRecords entry: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let req = client
            .sdk()
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries));
        let out = client.block_on(req.send()).map_err(|e| {
            anyhow!(
                "Kinesis PutRecords to stream {stream}: {}",
                classify(&e).message()
            )
        })?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            bail!(
                "Kinesis PutRecords to stream {stream}: {} of {} records failed",
                out.failed_record_count().unwrap_or(0),
                chunk.len()
            );
        }
        for r in out.records() {
            let seq = r
                .sequence_number()
                .ok_or_else(|| anyhow!("PutRecords answered a record without a sequence number"))?;
            if let Some(last) = seqs.last() {
                if cmp_sequence(seq, last) != Ordering::Greater {
                    bail!(
                        "Kinesis PutRecords to stream {stream}: sequence numbers out of put order"
                    );
                }
            }
            seqs.push(seq.to_owned());
        }
    }
    Ok(seqs)
}

/// Puts `lines` in order, one PutRecord at a time (each after the previous
/// one is acknowledged, chained with SequenceNumberForOrdering), to the
/// shard whose hash key range contains `shard_hash_key`; returns their
/// sequence numbers.
pub fn put_records_to_shard(
    client: &KinesisClient,
    stream: &str,
    shard_hash_key: u128,
    lines: &[&[u8]],
) -> Result<Vec<String>> {
    let key = format!("tidemark-{shard_hash_key}");
    let mut seqs: Vec<String> = Vec::with_capacity(lines.len());
    for line in lines {
        let (_, seq) = put_record(
            client,
            stream,
            &key,
            Some(shard_hash_key),
            line,
            seqs.last().map(String::as_str),
        )?;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Creates `stream` with `shards` shards and waits until it is ACTIVE.
pub fn create_stream(client: &KinesisClient, stream: &str, shards: u32) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .create_stream()
                .stream_name(stream)
                .shard_count(shards as i32)
                .send(),
        )
        .map_err(|e| anyhow!("Kinesis CreateStream {stream}: {}", classify(&e).message()))?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}

/// Waits until `stream` is ACTIVE (after CreateStream, SplitShard,
/// MergeShards).
pub fn wait_stream_active(client: &KinesisClient, stream: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = client
            .block_on(
                client
                    .sdk()
                    .describe_stream_summary()
                    .stream_name(stream)
                    .send(),
            )
            .map_err(|e| {
                anyhow!(
                    "Kinesis DescribeStreamSummary {stream}: {}",
                    classify(&e).message()
                )
            })?;
        let status = out
            .stream_description_summary()
            .map(|s| s.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Kinesis stream {stream} not ACTIVE after {timeout:?} (status {status:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SplitShard at `new_starting_hash`, then waits until the stream is ACTIVE.
pub fn split_shard(
    client: &KinesisClient,
    stream: &str,
    shard_id: &str,
    new_starting_hash: u128,
) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .split_shard()
                .stream_name(stream)
                .shard_to_split(shard_id)
                .new_starting_hash_key(new_starting_hash.to_string())
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "Kinesis SplitShard {stream} {shard_id}: {}",
                classify(&e).message()
            )
        })?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}

/// MergeShards of two adjacent shards, then waits until the stream is ACTIVE.
pub fn merge_shards(
    client: &KinesisClient,
    stream: &str,
    shard: &str,
    adjacent: &str,
) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .merge_shards()
                .stream_name(stream)
                .shard_to_merge(shard)
                .adjacent_shard_to_merge(adjacent)
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "Kinesis MergeShards {stream} {shard} {adjacent}: {}",
                classify(&e).message()
            )
        })?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}
