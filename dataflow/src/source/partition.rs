//! One partition's state in the source: its reader and position, its
//! watermark and lateness (SPEC 2–3), whether it is idle, and the warnings
//! about a partition that waits.
//!
//! Idleness rests on what the reader answers: only a [`Poll::CaughtUp`]
//! partition goes idle (after `idle_timeout` without data); a
//! [`Poll::Waiting`] one never does, however long it waits, and is warned
//! about and marked stalled instead.

use std::time::{Duration, Instant};

use super::{
    Decode, Meter, PartitionReader, PartitionStart, PositionEntry, RawBatch, SourceFailure,
    Successor,
};
#[cfg(doc)]
use super::{PartitionStats, Poll};
use crate::event::{Millis, Reject, RejectReason, Tick};
use crate::params::Params;
use crate::time::tick_of;

pub(super) struct Partition {
    /// The resume token at `next_offset`.
    pub(super) token: Option<String>,
    pub(super) start: PartitionStart,
    reader: Box<dyn PartitionReader>,
    pub(super) max_ts: Option<Millis>,
    pub(super) next_offset: u64,
    pub(super) max_tick: Tick,
    pub(super) finished: bool,
    /// Its reader failed ([`SourceFailure`]): it is read no more, emits
    /// nothing further and keeps its position, and it holds the worker's
    /// capability where it was, so no epoch past what it read correctly can
    /// complete. The job stops.
    pub(super) failed: bool,
    pub(super) idle: bool,
    last_data: Instant,
    /// When the last warning about waiting was logged.
    warned: Option<Instant>,
}

/// What a partition consults about its surroundings while it is polled.
pub(super) struct Env<'a> {
    pub(super) params: &'a Params,
    pub(super) meter: &'a Meter,
    /// The source's name, for warnings.
    pub(super) source: &'a str,
    pub(super) idle_timeout: Duration,
}

/// Where a record may go out: at `floor` (the worker's capability) or
/// later, and not at all below `skip_below` (its epoch was committed before
/// a restart: it is read only to rebuild the watermark).
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub(super) floor: Tick,
    pub(super) skip_below: Tick,
}

/// The records of one batch, validated, each with the tick it goes out at.
pub(super) struct Staged<T> {
    pub(super) accepted: Vec<(Tick, T)>,
    pub(super) rejected: Vec<(Tick, Reject)>,
}

impl<T> Default for Staged<T> {
    fn default() -> Self {
        Staged {
            accepted: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

impl Partition {
    /// A partition read from `start`; records below `skip_below` count as
    /// already emitted.
    pub(super) fn new(
        start: PartitionStart,
        reader: Box<dyn PartitionReader>,
        skip_below: Tick,
        now: Instant,
    ) -> Self {
        Partition {
            token: start.token.clone(),
            max_ts: start.max_ts,
            next_offset: start.offset,
            max_tick: skip_below.saturating_sub(1),
            start,
            reader,
            finished: false,
            failed: false,
            idle: false,
            last_data: now,
            warned: None,
        }
    }

    /// The partition's watermark, ms (`max_ts − max_out_of_orderness`).
    fn watermark_ms(&self, params: &Params) -> Option<Millis> {
        self.max_ts
            .map(|m| m.saturating_sub(params.max_out_of_orderness_ms))
    }

    pub(super) fn watermark_tick(&self, params: &Params) -> Tick {
        match self.max_ts {
            Some(m) => tick_of(
                m.saturating_sub(params.max_out_of_orderness_ms),
                params.tick_ms,
            ),
            None => Tick::MIN,
        }
    }

    /// Where the partition is: its resume position.
    pub(super) fn position(&self) -> PositionEntry {
        PositionEntry {
            partition: self.start.partition,
            offset: self.next_offset,
            max_ts: self.max_ts,
            max_tick: self.max_tick,
            token: self.token.clone(),
        }
    }

    /// Asks the reader for up to `max` records into `batch` (cleared first).
    /// A reader's error fails the partition: `batch` is cleared (records
    /// read before the error in the same call are not handed out, so the
    /// position stays at the last record emitted) and the error is returned
    /// for the job.
    pub(super) fn poll(
        &mut self,
        max: usize,
        batch: &mut RawBatch,
    ) -> Result<super::Poll, SourceFailure> {
        batch.clear();
        self.reader.poll(max, batch).map_err(|what| {
            batch.clear();
            self.fail(what)
        })
    }

    /// The reader answered `Poll::Finished`: the partition is done, and
    /// these continue it. If the reader cannot say which partitions
    /// continue it, the partition fails instead of finishing, so it keeps
    /// holding the capability its successors would need.
    pub(super) fn finish(&mut self) -> Result<Vec<Successor>, SourceFailure> {
        match self.reader.successors() {
            Ok(s) => {
                self.finished = true;
                Ok(s)
            }
            Err(what) => Err(self.fail(what)),
        }
    }

    fn fail(&mut self, what: String) -> SourceFailure {
        self.failed = true;
        self.idle = false;
        SourceFailure {
            partition: self.start.partition,
            what,
        }
    }

    /// The reader answered `Poll::Waiting`: records are unread, so the
    /// partition is never idle, even if it was caught up before; once it has
    /// waited `idle_timeout` without data, it is warned about.
    pub(super) fn waiting(&mut self, env: &Env<'_>) {
        self.idle = false;
        if self.last_data.elapsed() >= env.idle_timeout {
            self.warn_waiting(env);
        }
    }

    /// The source paused reading for `d` (back-pressure): that time does
    /// not count as time without data.
    pub(super) fn paused_for(&mut self, d: Duration) {
        self.last_data = (self.last_data + d).min(Instant::now());
    }

    /// The reader answered `Poll::CaughtUp`: the partition no longer waits,
    /// and goes idle after `idle_timeout` without data.
    pub(super) fn caught_up(&mut self, env: &Env<'_>) {
        self.mark_flowing(env.meter);
        if !self.idle && self.last_data.elapsed() >= env.idle_timeout {
            self.idle = true;
        }
    }

    /// The reader handed out the records in `batch`: the partition is not
    /// idle and does not wait, and the meter counts them.
    pub(super) fn received(&mut self, batch: &mut RawBatch, meter: &Meter) {
        if let Some(t) = batch.resume.take() {
            self.token = Some(t);
        }
        self.idle = false;
        self.last_data = Instant::now();
        self.mark_flowing(meter);
        meter
            .records
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// After the batch read at `read_at` was classified into `staged`:
    /// the meter's latency queues and this partition's statistics.
    pub(super) fn report<T>(
        &self,
        env: &Env<'_>,
        batch: &RawBatch,
        staged: &Staged<T>,
        read_at: Instant,
    ) {
        let meter = env.meter;
        let batch_max = staged.accepted.iter().map(|a| a.0).max();
        if let Some(t) = batch_max {
            let entry = (read_at, t, staged.accepted.len() as u32);
            for q in [&meter.batches, &meter.frontier_batches] {
                let mut b = q.lock().unwrap();
                if b.len() < 1 << 16 {
                    b.push_back(entry);
                }
            }
        }
        let mut stats = meter.partitions.lock().unwrap();
        let s = stats.entry(self.start.partition).or_default();
        s.records += batch.len() as u64;
        s.records_in += (staged.accepted.len() + staged.rejected.len()) as u64;
        s.bytes += batch.data.len() as u64;
        s.position = self.next_offset;
        s.watermark_ms = self.watermark_ms(env.params);
    }

    /// Records flow again (or the partition is caught up): it no longer waits.
    fn mark_flowing(&mut self, meter: &Meter) {
        if self.warned.take().is_none() {
            return;
        }
        let waited = self.last_data.elapsed().as_secs_f64();
        tracing::info!(
            partition = self.start.partition,
            position = self.next_offset,
            "source partition {} ({}) reads again after waiting {waited:.0}s",
            self.start.partition,
            self.reader.describe(),
        );
        if let Some(s) = meter
            .partitions
            .lock()
            .unwrap()
            .get_mut(&self.start.partition)
        {
            s.stalled_since = None;
        }
    }

    /// A partition with records unread and none arriving for longer than
    /// `idle_timeout`: it holds the frontier, so an operator must see it.
    /// Logs a warning (again every `idle_timeout`, at least 10 s apart) and
    /// marks it stalled in the meter ([`PartitionStats::stalled_since`]),
    /// which the metrics export.
    fn warn_waiting(&mut self, env: &Env<'_>) {
        let (params, meter, source) = (env.params, env.meter, env.source);
        let now = Instant::now();
        let every = Duration::from_millis(params.idle_timeout_ms).max(Duration::from_secs(10));
        if self.warned.is_some_and(|w| now.duration_since(w) < every) {
            return;
        }
        if self.warned.is_none() {
            let mut stats = meter.partitions.lock().unwrap();
            let s = stats.entry(self.start.partition).or_default();
            s.stalled_since = Some(self.last_data);
            s.position = self.next_offset;
        }
        self.warned = Some(now);
        let waited = now.duration_since(self.last_data).as_secs();
        let watermark = self
            .watermark_ms(params)
            .map(crate::rfc3339::format_rfc3339_ms);
        tracing::warn!(
            source,
            partition = self.start.partition,
            position = self.next_offset,
            waited_s = waited,
            watermark = watermark.as_deref().unwrap_or("none"),
            "source partition {} ({}) has records unread but none arrived for {waited}s: \
             waiting for it and holding the frontier (an unreachable broker or endpoint \
             is waited out; it is not idle)",
            self.start.partition,
            self.reader.describe(),
        );
    }

    /// Validates one record, updates the partition's watermark, and stages
    /// it: accepted at its own tick, or rejected (`LATE` against this
    /// partition's watermark, or against `bounds.floor`) at the
    /// partition's watermark tick when it was read.
    #[inline]
    pub(super) fn classify<D: Decode>(
        &mut self,
        bytes: &[u8],
        offset: u64,
        params: &Params,
        bounds: Bounds,
        staged: &mut Staged<D::Out>,
    ) {
        let Bounds { floor, skip_below } = bounds;
        let wm_ms = self.watermark_ms(params);
        let wm_tick = self.watermark_tick(params).max(floor);
        let outcome = match D::decode(bytes, params, self.start.partition, offset) {
            Ok(txn) => {
                let at = D::event_time(&txn);
                let late = wm_ms.is_some_and(|wm| at < wm);
                let t = tick_of(at, params.tick_ms);
                if late {
                    Err(RejectReason::Late)
                } else {
                    self.max_ts = Some(self.max_ts.map_or(at, |m| m.max(at)));
                    if t < floor {
                        // Only after the partition was idle and the job's
                        // watermark moved past it: late against the job.
                        Err(RejectReason::Late)
                    } else {
                        Ok((t, txn))
                    }
                }
            }
            Err(reason) => Err(reason),
        };
        self.next_offset = offset + 1;
        match outcome {
            Ok((t, txn)) => {
                self.max_tick = self.max_tick.max(t);
                if t >= skip_below {
                    staged.accepted.push((t, txn));
                }
            }
            Err(reason) => {
                self.max_tick = self.max_tick.max(wm_tick);
                if wm_tick >= skip_below {
                    staged.rejected.push((
                        wm_tick,
                        Reject {
                            reason,
                            partition: self.start.partition,
                            offset,
                            raw: bytes.to_vec(),
                        },
                    ));
                }
            }
        }
    }
}
