//! Puts JSON Lines files into a Kinesis stream, file i's lines in order into
//! shard i (ExplicitHashKey at the start of its hash key range), creating
//! the stream with one shard per file when it does not exist:
//!
//!   kinesis_put ENDPOINT STREAM FILE...
//!
//! For trying `tidemark replay --kinesis` and for benchmarks; the region and
//! credentials come from the AWS environment.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_connectors::kinesis::{
    create_stream, discover_shards, put_lines_batched, wait_stream_active, KinesisSettings,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: kinesis_put ENDPOINT STREAM FILE...");
    }
    let (endpoint, stream, files) = (&args[1], &args[2], &args[3..]);
    let mut settings = KinesisSettings::new(stream.as_str());
    settings.endpoint = Some(endpoint.clone());
    let client = settings.client()?;
    if discover_shards(&client, stream).is_err() {
        create_stream(&client, stream, files.len() as u32)?;
        wait_stream_active(&client, stream, Duration::from_secs(60))?;
    }
    let shards = discover_shards(&client, stream)?;
    if shards.len() < files.len() {
        bail!(
            "stream {stream} has {} shards for {} files",
            shards.len(),
            files.len()
        );
    }
    let t0 = Instant::now();
    let mut total = 0;
    for (f, shard) in files.iter().zip(&shards) {
        let bytes = std::fs::read(f).with_context(|| format!("reading {f}"))?;
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        put_lines_batched(&client, stream, shard.starting_hash, &lines)?;
        total += lines.len();
    }
    eprintln!(
        "put {total} records into {stream} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
