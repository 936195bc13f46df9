//! The built-in generator as a source: each generated partition is a
//! partition of the job, replayable from any offset (generation is
//! deterministic, so resuming regenerates and skips).

use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

use crate::generator::merchants::{merchant_rows, MerchantRows, MerchantsConfig};
use crate::generator::{partition, GenConfig, PartitionGen};

pub struct GenReader {
    gen: PartitionGen,
    buf: Vec<u8>,
    next_offset: u64,
}

impl GenReader {
    pub fn open(cfg: &GenConfig, p: u32, offset: u64) -> Self {
        let mut gen = partition(cfg, p);
        let mut buf = Vec::new();
        let mut next_offset = 0;
        while next_offset < offset && gen.next_into(&mut buf) {
            next_offset += 1;
        }
        GenReader {
            gen,
            buf,
            next_offset,
        }
    }
}

impl PartitionReader for GenReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        for _ in 0..max {
            if !self.gen.next_into(&mut self.buf) {
                return Ok(Poll::Finished);
            }
            batch.push(&self.buf, self.next_offset);
            self.next_offset += 1;
        }
        Ok(Poll::Ready)
    }
}

/// The merchants reference table of a generated dataset as its one
/// partition, replayable from any offset in the same way.
pub struct MerchantsReader {
    rows: MerchantRows,
    next_offset: u64,
}

impl MerchantsReader {
    pub fn open(cfg: &GenConfig, mc: &MerchantsConfig, offset: u64) -> Self {
        let mut rows = merchant_rows(cfg, mc);
        let mut next_offset = 0;
        while next_offset < offset && rows.next().is_some() {
            next_offset += 1;
        }
        MerchantsReader { rows, next_offset }
    }
}

impl PartitionReader for MerchantsReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        for _ in 0..max {
            let Some(row) = Iterator::next(&mut self.rows) else {
                return Ok(Poll::Finished);
            };
            batch.push(&row, self.next_offset);
            self.next_offset += 1;
        }
        Ok(Poll::Ready)
    }
}
