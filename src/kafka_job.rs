//! Wiring of the Kafka source adapter
//! ([`tidemark_connectors::adapters::kafka`]) into the job: committed
//! checkpoint positions in, the `tidemark_source_lag_records` gauge out.

use std::sync::Arc;

use anyhow::Result;
use tidemark_checkpoint::manifest::Position;
use tidemark_connectors::adapters::kafka;
pub use tidemark_connectors::adapters::kafka::{parse_bound, Bound, KafkaSource};
use tidemark_connectors::background::Background;
use tidemark_dataflow::source::Meter;

/// [`kafka::offset_mirror`] over checkpoint positions, each partition's
/// lag set as a gauge labelled with the position's source and partition.
pub fn offset_mirror(source: &KafkaSource, meter: Arc<Meter>) -> Result<Background<Vec<Position>>> {
    kafka::offset_mirror(
        source,
        meter,
        |p: &Position| (p.partition, p.offset),
        |p: &Position, lag| {
            let labels = [
                ("source", p.source.clone()),
                ("partition", p.partition.to_string()),
            ];
            metrics::gauge!("tidemark_source_lag_records", &labels).set(lag as f64);
        },
    )
}
