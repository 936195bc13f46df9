//! The job's sources as one type: what each partition is (recorded in
//! commits), where bounded ones end, which partitions open at start, and
//! each worker's readers opened at their committed positions.

use std::sync::Arc;

use anyhow::Result;
use tidemark_dataflow::source::{PartitionReader, PartitionStart};
use tidemark_protocol::manifest::Position;

use crate::adapters::files::Input;
use crate::adapters::kafka::KafkaSource;
use crate::gen_source::{GenReader, MerchantsReader};
use crate::generator::GenConfig;
use crate::kafka::open_readers;
use crate::kinesis_stream::StreamSource;
use crate::merchants_gen::MerchantsConfig;

pub enum SourceSpec {
    Files(Vec<Input>),
    Generator(GenConfig),
    Kafka(KafkaSource),
    /// Shards appear while running; all are read by process 0's workers.
    Kinesis(Arc<StreamSource>),
    /// The merchants reference table of the generator's merchants: one
    /// partition (a reference source only).
    Merchants(GenConfig),
}

impl SourceSpec {
    pub fn partitions(&self) -> u32 {
        match self {
            SourceSpec::Files(f) => f.len() as u32,
            SourceSpec::Generator(g) => g.partitions,
            SourceSpec::Kafka(k) => k.parts.len() as u32,
            SourceSpec::Kinesis(k) => k.describe().len() as u32,
            SourceSpec::Merchants(_) => 1,
        }
    }

    /// The partitions opened at start, given the committed ones.
    pub fn plan(&self, committed: &[Position]) -> Vec<u32> {
        match self {
            SourceSpec::Kinesis(k) => k.plan(&committed.iter().map(|p| p.partition).collect()),
            _ => (0..self.partitions()).collect(),
        }
    }

    /// Where each partition ends, for sources that end at an offset.
    pub fn ends(&self) -> Vec<Option<u64>> {
        match self {
            SourceSpec::Kafka(k) if k.parts.iter().any(|p| p.end.is_some()) => {
                k.parts.iter().map(|p| p.end).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A restart keeps the ends its first start fixed.
    pub fn keep_ends(&mut self, ends: &[Option<u64>]) {
        if let SourceSpec::Kafka(k) = self {
            for (p, e) in k.parts.iter_mut().zip(ends) {
                if e.is_some() {
                    p.end = *e;
                }
            }
        }
    }

    /// Whether the source follows a live stream (no end): only then is
    /// event time wall time.
    pub fn following(&self) -> bool {
        match self {
            SourceSpec::Kafka(k) => k.parts.iter().any(|p| p.end.is_none()),
            SourceSpec::Kinesis(k) => !k.bounded(),
            _ => false,
        }
    }

    /// What each partition is, recorded in commits.
    pub fn describe(&self) -> Vec<String> {
        match self {
            SourceSpec::Files(f) => f.iter().map(|i| format!("file:{}", i.name())).collect(),
            SourceSpec::Generator(g) => (0..g.partitions)
                .map(|p| format!("generator:{}/{p}", g.seed))
                .collect(),
            SourceSpec::Kafka(k) => k.describe(),
            SourceSpec::Kinesis(k) => k.describe(),
            SourceSpec::Merchants(g) => vec![format!("generator-merchants:{}", g.seed)],
        }
    }

    /// Opens the partitions `mine` of one worker, each at its committed
    /// position (`None`: never committed, start where the source says).
    pub fn open_worker(
        &self,
        mine: &[(u32, Option<&Position>)],
    ) -> Result<Vec<(PartitionStart, Box<dyn PartitionReader>)>> {
        let start = |p: u32, pos: Option<&Position>, offset: u64| PartitionStart {
            partition: p,
            offset,
            max_ts: pos.and_then(|x| x.max_ts),
            token: pos.and_then(|x| x.token.clone()),
        };
        match self {
            SourceSpec::Kafka(k) => {
                // One consumer per worker for all its partitions.
                let parts: Vec<_> = mine
                    .iter()
                    .map(|&(p, pos)| {
                        let mut kp = k.parts[p as usize].clone();
                        kp.checkpoint = pos.map(|x| x.offset);
                        kp
                    })
                    .collect();
                let readers = open_readers(&k.settings, &parts)?;
                Ok(mine
                    .iter()
                    .zip(readers)
                    .map(|(&(p, pos), r)| {
                        let s = start(p, pos, r.start_offset());
                        (s, Box::new(r) as Box<dyn PartitionReader>)
                    })
                    .collect())
            }
            SourceSpec::Kinesis(k) => mine
                .iter()
                .map(|&(p, pos)| {
                    let (offset, token) = pos.map_or((0, None), |x| (x.offset, x.token.clone()));
                    let reader = k.open(p, (offset, token))?;
                    Ok((start(p, pos, reader.next_offset()), Box::new(reader) as _))
                })
                .collect(),
            _ => mine
                .iter()
                .map(|&(p, pos)| {
                    let offset = pos.map_or(0, |x| x.offset);
                    let reader: Box<dyn PartitionReader> = match self {
                        SourceSpec::Files(f) => Box::new(f[p as usize].open(offset)?),
                        SourceSpec::Generator(g) => Box::new(GenReader::open(g, p, offset)),
                        SourceSpec::Merchants(g) => Box::new(MerchantsReader::open(
                            g,
                            &MerchantsConfig::default(),
                            offset,
                        )),
                        SourceSpec::Kafka(_) | SourceSpec::Kinesis(_) => unreachable!(),
                    };
                    Ok((start(p, pos, offset), reader))
                })
                .collect::<Result<Vec<_>>>()
                .map_err(|e: anyhow::Error| e.context("opening the input partitions")),
        }
    }
}
