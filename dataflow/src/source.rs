//! The source frame: validation, per-partition watermarks and lateness,
//! the worker's capability, and resume positions (SPEC 2–3, DESIGN "Time").
//!
//! Connectors implement [`PartitionReader`]; this operator owns everything
//! about time. A worker's capability is the minimum watermark tick of the
//! partitions it reads; each accepted record goes out at its own tick, each
//! reject at its partition's watermark tick when it was read.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::event::{Millis, Reject, RejectReason, Tick, Txn};
use crate::params::Params;
use crate::record::parse_record;
use crate::time::tick_of;

/// Partitions of the reference source (SPEC 9) are numbered from here
/// inside the dataflow, so one `u32` names a partition of either source;
/// outputs and manifests name them by the reference source's name and
/// their own index (see `checkpoint::manifest::SourceNames`).
pub const REFERENCE_BASE: u32 = 1 << 31;

/// Raw records of one partition, back to back, without per-record allocation.
#[derive(Default)]
pub struct RawBatch {
    pub data: Vec<u8>,
    /// `(end in data, offset in the partition)` per record.
    pub records: Vec<(usize, u64)>,
    /// A connector's own resume token, valid after the batch's last record
    /// (a Kinesis sequence number): committed with the position and handed
    /// back in [`PartitionStart::token`]. `None` keeps the previous one.
    pub resume: Option<String>,
}

impl RawBatch {
    pub fn push(&mut self, bytes: &[u8], offset: u64) {
        self.data.extend_from_slice(bytes);
        self.records.push((self.data.len(), offset));
    }
    pub fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
        self.resume = None;
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        let mut start = 0;
        self.records.iter().map(move |&(end, offset)| {
            let r = &self.data[start..end];
            start = end;
            (r, offset)
        })
    }
}

/// What a partition's reader has to say when asked for records.
///
/// Idleness (SPEC 3) rests on one rule: a partition is idle only when it
/// has no data it knows about. A reader that has nothing to hand out says
/// which case it is in — [`Poll::CaughtUp`] (it has read everything it knows
/// of) or [`Poll::Waiting`] (records are, or may be, unread) — and only a
/// caught-up partition ever stops holding the frontier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were appended (possibly none, if a bound was reached).
    Ready,
    /// Nothing to read, and nothing known unread: an unbounded source is at
    /// the end its server last reported (Kafka partition EOF with no record
    /// since, Kinesis `MillisBehindLatest` = 0). After `time.idle_timeout`
    /// of wall time without records the partition is idle: it stops holding
    /// the frontier until it produces again.
    CaughtUp,
    /// Nothing to read right now, but records are (or may be) unread: below
    /// a bounded end, behind the last reported high watermark, or a server
    /// that does not answer. Never idle, however long it lasts: letting the
    /// frontier pass would make the unread records late. After
    /// `time.idle_timeout` without records the source warns, naming the
    /// partition, and marks it stalled in its [`PartitionStats`].
    Waiting,
    /// A bounded input has ended.
    Finished,
}

/// One source partition, positioned at its start offset by the connector.
pub trait PartitionReader: 'static {
    /// Append up to `max` records to `batch`.
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String>;

    /// Asked once, right after `poll` answered [`Poll::Finished`]: the
    /// partitions that continue this one (the children of a closed Kinesis
    /// shard), read from offset 0. Each starts with this partition's
    /// `max_ts`, so it continues its lateness and never needs a time the
    /// worker's capability has passed.
    fn successors(&mut self) -> Result<Vec<Successor>, String> {
        Ok(Vec::new())
    }

    /// Where this partition reads, for an operator's eyes (e.g. `topic
    /// payments partition 7, end offset 25000`): named in the warning about
    /// a partition that waits.
    fn describe(&self) -> String {
        String::new()
    }
}

/// A partition that continues a finished one ([`PartitionReader::successors`]).
pub struct Successor {
    pub partition: u32,
    pub reader: Box<dyn PartitionReader>,
}

/// Where a partition starts, restored from a manifest or fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStart {
    pub partition: u32,
    /// Next offset to read.
    pub offset: u64,
    /// The partition's `max_ts` just before `offset`.
    pub max_ts: Option<Millis>,
    /// The connector's resume token at `offset`, if it uses one.
    #[serde(default)]
    pub token: Option<String>,
}

/// A resume position, valid for every epoch boundary above `max_tick`:
/// every record before `offset` has a time at or below `max_tick`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionEntry {
    pub partition: u32,
    pub offset: u64,
    pub max_ts: Option<Millis>,
    pub max_tick: Tick,
    /// The connector's resume token at `offset` ([`RawBatch::resume`]).
    pub token: Option<String>,
}

pub struct SourceConfig {
    /// Records read per partition per poll.
    pub batch: usize,
    /// Records read per activation, across partitions.
    pub budget: usize,
    /// Pause reading while the probe lags the source by more than this many ticks.
    pub max_lag_ticks: i64,
    /// Records with a time below this tick were committed before a restart:
    /// they are read (to rebuild watermarks) but not emitted.
    pub skip_below: Tick,
    /// Shared with the process's progress display and latency accounting.
    pub meter: std::sync::Arc<Meter>,
    /// Read at most this many records per second on this worker (`None`:
    /// as fast as downstream allows). For fixed-rate runs and benchmarks.
    pub max_rate: Option<u64>,
}

/// What the sources of a process have read: a count, and for latency
/// accounting the wall time each batch was read with its largest tick.
#[derive(Default)]
pub struct Meter {
    pub records: std::sync::atomic::AtomicU64,
    pub batches: std::sync::Mutex<std::collections::VecDeque<(Instant, Tick, u32)>>,
    /// The same, for measuring when the dataflow's frontier passes them.
    pub frontier_batches: std::sync::Mutex<std::collections::VecDeque<(Instant, Tick, u32)>>,
    /// Per partition, updated once per batch read.
    pub partitions: std::sync::Mutex<std::collections::BTreeMap<u32, PartitionStats>>,
}

/// What one source partition has read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub records: u64,
    /// Records that entered the job: read, minus those of epochs committed
    /// before a restart (read again only to rebuild the watermark).
    pub records_in: u64,
    pub bytes: u64,
    /// The next offset to read.
    pub position: u64,
    /// The partition's watermark, ms (`max_ts − max_out_of_orderness`).
    pub watermark_ms: Option<Millis>,
    /// Since when the partition has been waiting with records unread and
    /// none arriving for longer than `idle_timeout` ([`Poll::Waiting`]):
    /// it holds the frontier. `None` while it reads or is caught up.
    pub stalled_since: Option<Instant>,
}

struct Partition {
    /// The resume token at `next_offset`.
    token: Option<String>,
    start: PartitionStart,
    reader: Box<dyn PartitionReader>,
    max_ts: Option<Millis>,
    next_offset: u64,
    max_tick: Tick,
    finished: bool,
    idle: bool,
    last_data: Instant,
    /// When the last warning about waiting was logged.
    warned: Option<Instant>,
}

impl Partition {
    fn watermark_tick(&self, params: &Params) -> Tick {
        match self.max_ts {
            Some(m) => tick_of(
                m.saturating_sub(params.max_out_of_orderness_ms),
                params.tick_ms,
            ),
            None => Tick::MIN,
        }
    }
}

/// What a source's records are: how one is validated (every SPEC 2 rule
/// but `LATE`, which the source decides) and its event time.
pub trait Decode: 'static {
    type Out: timely::ExchangeData;
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Self::Out, RejectReason>;
    fn event_time(out: &Self::Out) -> Millis;
}

/// Payment transactions (SPEC 1–2).
pub struct Transactions;

impl Decode for Transactions {
    type Out = Txn;
    #[inline]
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Txn, RejectReason> {
        parse_record(bytes, params.max_record_bytes, partition, offset)
    }
    #[inline]
    fn event_time(out: &Txn) -> Millis {
        out.event_time
    }
}

/// Rows of the merchants reference table (SPEC 9), as `(merchant, version)`
/// at the time of their `valid_from`.
pub struct Merchants;

impl Decode for Merchants {
    type Out = (String, crate::enrich::Version);
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Self::Out, RejectReason> {
        let row = crate::record::parse_merchant_row(bytes, params.max_record_bytes)?;
        Ok((
            row.merchant,
            crate::enrich::Version {
                valid_from: row.valid_from,
                partition,
                offset,
                merchant_category: row.merchant_category,
                risk_tier: row.risk_tier,
                country: row.country,
            },
        ))
    }
    fn event_time(out: &Self::Out) -> Millis {
        out.1.valid_from
    }
}

pub type SourceStreams<'s, D = Txn> = (
    StreamVec<'s, Tick, D>,
    StreamVec<'s, Tick, Reject>,
    StreamVec<'s, Tick, PositionEntry>,
);

/// Builds the source operator of transactions over this worker's partitions.
pub fn source<'s>(
    scope: Scope<'s, Tick>,
    name: &str,
    params: Params,
    config: SourceConfig,
    partitions: Vec<(PartitionStart, Box<dyn PartitionReader>)>,
    probe: ProbeHandle<Tick>,
) -> SourceStreams<'s> {
    source_of::<Transactions>(scope, name, params, config, partitions, probe, None)
}

/// Builds the source operator over this worker's partitions of records `D`.
///
/// With `follow` (another source's positions), this source's time follows
/// that stream's frontier while all its partitions are idle: a reference
/// table that has not changed for a while must not hold the job back
/// (SPEC 3's idle partitions), and a row that then arrives behind the
/// job's time is late against it.
#[allow(clippy::too_many_arguments)]
pub fn source_of<'s, D: Decode>(
    scope: Scope<'s, Tick>,
    name: &str,
    params: Params,
    config: SourceConfig,
    partitions: Vec<(PartitionStart, Box<dyn PartitionReader>)>,
    probe: ProbeHandle<Tick>,
    follow: Option<StreamVec<'s, Tick, PositionEntry>>,
) -> SourceStreams<'s, D::Out> {
    let name_s = name.to_owned();
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let mut follow_in =
        follow.map(|s| builder.new_input(s, timely::dataflow::channels::pact::Pipeline));
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let (txn_out, txns) = builder.new_output();
    let (rej_out, rejects) = builder.new_output();
    let (pos_out, positions) = builder.new_output();
    let mut txn_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<D::Out>>>::from(txn_out);
    let mut rej_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Reject>>>::from(rej_out);
    let mut pos_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<PositionEntry>>>::from(pos_out);

    let now = Instant::now();
    let mut parts: Vec<Partition> = partitions
        .into_iter()
        .map(|(start, reader)| Partition {
            token: start.token.clone(),
            max_ts: start.max_ts,
            next_offset: start.offset,
            max_tick: config.skip_below.saturating_sub(1),
            start,
            reader,
            finished: false,
            idle: false,
            last_data: now,
            warned: None,
        })
        .collect();
    let idle_timeout = Duration::from_millis(params.idle_timeout_ms);

    builder.build(move |caps| {
        let mut caps: Option<[Capability<Tick>; 3]> = caps.try_into().ok();
        let mut batch = RawBatch::default();
        let mut accepted: Vec<(Tick, D::Out)> = Vec::new();
        let mut rejected: Vec<(Tick, Reject)> = Vec::new();
        let mut announced = false;
        let started = Instant::now();
        let mut total_read = 0u64;
        let mut cursor = 0usize;

        move |frontiers| {
            if let Some(input) = follow_in.as_mut() {
                input.for_each(|_, _| {});
            }
            let Some([txn_cap, rej_cap, pos_cap]) = caps.as_mut() else {
                return;
            };
            let mut txn_session = txn_out.activate();
            let mut rej_session = rej_out.activate();
            let mut pos_session = pos_out.activate();

            // The initial positions, so a commit before any progress keeps them.
            if !announced {
                announced = true;
                let mut s = pos_session.session(&*pos_cap);
                for p in &parts {
                    s.give(PositionEntry {
                        partition: p.start.partition,
                        offset: p.next_offset,
                        max_ts: p.max_ts,
                        max_tick: p.max_tick,
                        token: p.token.clone(),
                    });
                }
            }

            // Flow control: do not run ahead of what downstream has finished.
            let cap_time = *txn_cap.time();
            let lagging = probe.with_frontier(|f| {
                f.iter().next().is_some_and(|&done| {
                    cap_time > Tick::MIN && done < cap_time.saturating_sub(config.max_lag_ticks)
                })
            });

            // Rate limit: the records this worker may have read by now.
            let budget = match config.max_rate {
                Some(rate) => {
                    let allowed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    // Credit unused while a source waited (an outage) is
                    // capped at one second's worth: no burst past the rate.
                    total_read = total_read.max(allowed.saturating_sub(rate));
                    (allowed.saturating_sub(total_read) as usize).min(config.budget)
                }
                None => config.budget,
            };
            let throttled = budget == 0;
            let mut read = 0usize;
            let mut pending_any = false;
            // Successors of partitions finished in this activation, with
            // the index of their parent.
            let mut born: Vec<(Successor, usize)> = Vec::new();
            if !lagging && !throttled {
                let floor = cap_time;
                // Every live partition gets a fair share, starting where the
                // last activation stopped, so none is starved and the
                // watermark (their minimum) keeps moving.
                let live = parts.iter().filter(|p| !p.finished).count().max(1);
                let share = config.batch.min(budget.div_ceil(live)).max(1);
                let n = parts.len();
                'outer: while read < budget {
                    let mut progressed = false;
                    let start = cursor;
                    for i in 0..n {
                        let idx = (start + i) % n;
                        cursor = (idx + 1) % n;
                        let p = &mut parts[idx];
                        if p.finished {
                            continue;
                        }
                        batch.clear();
                        let poll = p
                            .reader
                            .poll(share.min(budget - read), &mut batch)
                            .unwrap_or_else(|e| {
                                panic!(
                                    "source {name_p} partition {}: {e}",
                                    p.start.partition,
                                    name_p = "input"
                                )
                            });
                        match poll {
                            Poll::Finished => {
                                p.finished = true;
                                let next = p.reader.successors().unwrap_or_else(|e| {
                                    panic!("source input partition {}: {e}", p.start.partition)
                                });
                                for s in next {
                                    born.push((s, idx));
                                }
                            }
                            Poll::Waiting => {
                                pending_any = true;
                                // Records are unread: never idle, even if
                                // it was caught up before.
                                p.idle = false;
                                if p.last_data.elapsed() >= idle_timeout {
                                    warn_waiting(p, &params, &config.meter, &name_s);
                                }
                            }
                            Poll::CaughtUp => {
                                pending_any = true;
                                p.mark_flowing(&config.meter);
                                if !p.idle && p.last_data.elapsed() >= idle_timeout {
                                    p.idle = true;
                                }
                            }
                            Poll::Ready => {}
                        }
                        if batch.is_empty() {
                            continue;
                        }
                        progressed = true;
                        if let Some(t) = batch.resume.take() {
                            p.token = Some(t);
                        }
                        p.idle = false;
                        p.last_data = Instant::now();
                        p.mark_flowing(&config.meter);
                        read += batch.len();
                        config
                            .meter
                            .records
                            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let read_at = Instant::now();
                        for (bytes, offset) in batch.iter() {
                            classify::<D>(
                                p,
                                bytes,
                                offset,
                                &params,
                                floor,
                                config.skip_below,
                                &mut accepted,
                                &mut rejected,
                            );
                        }
                        let batch_max = accepted.iter().map(|a| a.0).max();
                        if let Some(t) = batch_max {
                            let entry = (read_at, t, accepted.len() as u32);
                            for q in [&config.meter.batches, &config.meter.frontier_batches] {
                                let mut b = q.lock().unwrap();
                                if b.len() < 1 << 16 {
                                    b.push_back(entry);
                                }
                            }
                        }
                        {
                            let mut stats = config.meter.partitions.lock().unwrap();
                            let s = stats.entry(p.start.partition).or_default();
                            s.records += batch.len() as u64;
                            s.records_in += (accepted.len() + rejected.len()) as u64;
                            s.bytes += batch.data.len() as u64;
                            s.position = p.next_offset;
                            s.watermark_ms = p
                                .max_ts
                                .map(|m| m.saturating_sub(params.max_out_of_orderness_ms));
                        }
                        emit_sorted(&mut accepted, txn_cap, &mut txn_session);
                        emit_sorted(&mut rejected, rej_cap, &mut rej_session);
                        pos_session.session(&*pos_cap).give(PositionEntry {
                            partition: p.start.partition,
                            offset: p.next_offset,
                            max_ts: p.max_ts,
                            max_tick: p.max_tick,
                            token: p.token.clone(),
                        });
                        if read >= budget {
                            break 'outer;
                        }
                    }
                    if !progressed {
                        break;
                    }
                }
            }

            // Successors join at their parent's max_ts, before the capability
            // is recomputed, so it never passes a time they may still need.
            if !born.is_empty() {
                let mut s = pos_session.session(&*pos_cap);
                for (succ, parent) in born {
                    let max_ts = parts[parent].max_ts;
                    let start = PartitionStart {
                        partition: succ.partition,
                        offset: 0,
                        max_ts,
                        token: None,
                    };
                    let p = Partition {
                        token: None,
                        max_ts,
                        next_offset: 0,
                        max_tick: config.skip_below.saturating_sub(1),
                        start,
                        reader: succ.reader,
                        finished: false,
                        idle: false,
                        last_data: Instant::now(),
                        warned: None,
                    };
                    s.give(PositionEntry {
                        partition: p.start.partition,
                        offset: 0,
                        max_ts,
                        max_tick: p.max_tick,
                        token: None,
                    });
                    parts.push(p);
                }
            }

            // The new capability: the least watermark of live, non-idle partitions.
            let live: Vec<&Partition> = parts.iter().filter(|p| !p.finished).collect();
            if live.is_empty() {
                caps = None;
                return;
            }
            let active = live.iter().filter(|p| !p.idle);
            let wm = active.map(|p| p.watermark_tick(&params)).min();
            // All idle: hold at the largest watermark until one produces
            // again, or follow the followed stream's time.
            let wm = wm.unwrap_or_else(|| {
                let held = live
                    .iter()
                    .map(|p| p.watermark_tick(&params))
                    .max()
                    .unwrap();
                let followed = follow_in
                    .as_ref()
                    .and_then(|_| frontiers[0].frontier().iter().min().copied());
                followed.map_or(held, |f| held.max(f))
            });
            if wm > *txn_cap.time() {
                txn_cap.downgrade(&wm);
                rej_cap.downgrade(&wm);
                pos_cap.downgrade(&wm);
            }
            total_read += read as u64;
            if lagging || throttled || (pending_any && read == 0) {
                activator.activate_after(Duration::from_millis(if pending_any { 10 } else { 1 }));
            } else {
                activator.activate();
            }
        }
    });
    (txns, rejects, positions)
}

impl Partition {
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
}

/// A partition with records unread and none arriving for longer than
/// `idle_timeout`: it holds the frontier, so an operator must see it. Logs a
/// warning (again every `idle_timeout`, at least 10 s apart) and marks it
/// stalled in the meter, which the metrics export.
fn warn_waiting(p: &mut Partition, params: &Params, meter: &Meter, source: &str) {
    let now = Instant::now();
    let every = Duration::from_millis(params.idle_timeout_ms).max(Duration::from_secs(10));
    if p.warned.is_some_and(|w| now.duration_since(w) < every) {
        return;
    }
    if p.warned.is_none() {
        let mut stats = meter.partitions.lock().unwrap();
        let s = stats.entry(p.start.partition).or_default();
        s.stalled_since = Some(p.last_data);
        s.position = p.next_offset;
    }
    p.warned = Some(now);
    let waited = now.duration_since(p.last_data).as_secs();
    let watermark = p.max_ts.map(|m| {
        crate::rfc3339::format_rfc3339_ms(m.saturating_sub(params.max_out_of_orderness_ms))
    });
    tracing::warn!(
        source,
        partition = p.start.partition,
        position = p.next_offset,
        waited_s = waited,
        watermark = watermark.as_deref().unwrap_or("none"),
        "source partition {} ({}) has records unread but none arrived for {waited}s: \
         waiting for it and holding the frontier (an unreachable broker or endpoint \
         is waited out; it is not idle)",
        p.start.partition,
        p.reader.describe(),
    );
}

/// Validate one record, update its partition's watermark, and stage it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn classify<D: Decode>(
    p: &mut Partition,
    bytes: &[u8],
    offset: u64,
    params: &Params,
    floor: Tick,
    skip_below: Tick,
    accepted: &mut Vec<(Tick, D::Out)>,
    rejected: &mut Vec<(Tick, Reject)>,
) {
    let wm_ms = p
        .max_ts
        .map(|m| m.saturating_sub(params.max_out_of_orderness_ms));
    let wm_tick = p.watermark_tick(params).max(floor);
    let outcome = match D::decode(bytes, params, p.start.partition, offset) {
        Ok(txn) => {
            let at = D::event_time(&txn);
            let late = wm_ms.is_some_and(|wm| at < wm);
            let t = tick_of(at, params.tick_ms);
            if late {
                Err(RejectReason::Late)
            } else {
                p.max_ts = Some(p.max_ts.map_or(at, |m| m.max(at)));
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
    p.next_offset = offset + 1;
    match outcome {
        Ok((t, txn)) => {
            p.max_tick = p.max_tick.max(t);
            if t >= skip_below {
                accepted.push((t, txn));
            }
        }
        Err(reason) => {
            p.max_tick = p.max_tick.max(wm_tick);
            if wm_tick >= skip_below {
                rejected.push((
                    wm_tick,
                    Reject {
                        reason,
                        partition: p.start.partition,
                        offset,
                        raw: bytes.to_vec(),
                    },
                ));
            }
        }
    }
}

fn emit_sorted<D: timely::ExchangeData>(
    staged: &mut Vec<(Tick, D)>,
    cap: &Capability<Tick>,
    out: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        Tick,
        CapacityContainerBuilder<Vec<D>>,
    >,
) {
    if staged.is_empty() {
        return;
    }
    if !staged.windows(2).all(|w| w[0].0 <= w[1].0) {
        staged.sort_by_key(|r| r.0);
    }
    let mut iter = staged.drain(..).peekable();
    while let Some((t, first)) = iter.next() {
        let c = cap.delayed(&t);
        let mut session = out.session(&c);
        session.give(first);
        while let Some((_, d)) = iter.next_if(|(t2, _)| *t2 == t) {
            session.give(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::Capture;

    struct VecReader(VecDeque<Vec<u8>>, u64);

    impl PartitionReader for VecReader {
        fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
            for _ in 0..max {
                match self.0.pop_front() {
                    Some(r) => {
                        batch.push(&r, self.1);
                        self.1 += 1;
                        // A connector token, as Kinesis sequence numbers are.
                        batch.resume = Some(format!("after-{}", self.1 - 1));
                    }
                    None => return Ok(Poll::Finished),
                }
            }
            Ok(Poll::Ready)
        }
    }

    fn rec(id: &str, secs: i64) -> Vec<u8> {
        let ts = crate::rfc3339::format_rfc3339_ms(secs * 1000);
        format!(
            r#"{{"transaction_id":"{id}","customer_id":"c","amount":1.5,"currency":"USD","merchant":"m","category":"k","status":"PENDING","timestamp":"{ts}"}}"#
        )
        .into_bytes()
    }

    type Captured = (
        Vec<(Tick, Vec<Txn>)>,
        Vec<(Tick, Vec<Reject>)>,
        std::collections::BTreeMap<u32, PartitionStats>,
        Vec<PositionEntry>,
    );

    type Readers = Vec<(PartitionStart, Box<dyn PartitionReader>)>;

    fn fresh(partition: u32) -> PartitionStart {
        PartitionStart {
            partition,
            offset: 0,
            max_ts: None,
            token: None,
        }
    }

    fn run(parts: Vec<Vec<Vec<u8>>>) -> Captured {
        run_readers(move || {
            parts
                .into_iter()
                .enumerate()
                .map(|(i, recs)| {
                    (
                        fresh(i as u32),
                        Box::new(VecReader(recs.into(), 0)) as Box<dyn PartitionReader>,
                    )
                })
                .collect()
        })
    }

    fn run_readers(make: impl FnOnce() -> Readers + Send + Sync + 'static) -> Captured {
        let meter = std::sync::Arc::new(Meter::default());
        let m = meter.clone();
        let (txns, rejects, positions) = timely::execute_directly(move |worker| {
            let (txns, rejects, positions) = worker.dataflow::<Tick, _, _>(|scope| {
                let readers = make();
                let config = SourceConfig {
                    batch: 2,
                    budget: 100,
                    max_lag_ticks: 1000,
                    skip_below: Tick::MIN,
                    meter: m,
                    max_rate: None,
                };
                let (t, r, p) = source(
                    scope,
                    "test",
                    Params::default(),
                    config,
                    readers,
                    ProbeHandle::new(),
                );
                (t.capture(), r.capture(), p.capture())
            });
            while worker.step() {}
            (txns, rejects, positions)
        });
        fn messages<D>(rx: std::sync::mpsc::Receiver<Event<Tick, Vec<D>>>) -> Vec<(Tick, Vec<D>)> {
            rx.try_iter()
                .filter_map(|e| match e {
                    Event::Messages(t, d) => Some((*t.least().expect("a time"), d)),
                    _ => None,
                })
                .collect()
        }
        let stats = meter.partitions.lock().unwrap().clone();
        let positions = messages(positions)
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        (messages(txns), messages(rejects), stats, positions)
    }

    #[test]
    fn lateness_is_per_partition_and_rejects_sit_at_the_watermark() {
        let (txns, rejects, stats, positions) = run(vec![
            vec![
                rec("a", 100),
                rec("b", 95),
                rec("c", 89),
                b"{oops".to_vec(),
                rec("d", 90),
            ],
            vec![rec("e", 50)],
        ]);
        let kept: Vec<(Tick, &str, u32, u64)> = txns
            .iter()
            .flat_map(|(t, v)| {
                v.iter()
                    .map(move |x| (*t, x.transaction_id(), x.partition, x.offset))
            })
            .collect();
        // Partition 1's record at 50 s is not late: partition 0's watermark
        // (90 s) does not apply to it. 90 s is exactly the watermark: on time.
        let mut kept = kept;
        kept.sort();
        assert_eq!(
            kept,
            vec![
                (50, "e", 1, 0),
                (90, "d", 0, 4),
                (95, "b", 0, 1),
                (100, "a", 0, 0)
            ]
        );
        let rej: Vec<(Tick, RejectReason, u64)> = rejects
            .iter()
            .flat_map(|(t, v)| v.iter().map(move |x| (*t, x.reason, x.offset)))
            .collect();
        // Both at the tick of partition 0's watermark when read: 100 s − 10 s.
        assert_eq!(
            rej,
            vec![
                (90, RejectReason::Late, 2),
                (90, RejectReason::Malformed, 3)
            ]
        );
        // A connector's resume token travels with the position it belongs to.
        let last = |p: u32| positions.iter().rfind(|e| e.partition == p).cloned();
        assert_eq!(
            last(0).map(|e| (e.offset, e.token)),
            Some((5, Some("after-4".to_owned())))
        );
        assert_eq!(
            last(1).map(|e| (e.offset, e.token)),
            Some((1, Some("after-0".to_owned())))
        );
        assert!(positions.iter().all(|e| e
            .token
            .as_ref()
            .is_none_or(|t| *t == format!("after-{}", e.offset - 1))));
        // Per-partition metrics: records and bytes read, position, watermark.
        let bytes0 = [
            rec("a", 100),
            rec("b", 95),
            rec("c", 89),
            b"{oops".to_vec(),
            rec("d", 90),
        ]
        .iter()
        .map(Vec::len)
        .sum::<usize>() as u64;
        assert_eq!(
            stats.get(&0),
            Some(&PartitionStats {
                records: 5,
                records_in: 5,
                bytes: bytes0,
                position: 5,
                watermark_ms: Some(90_000),
                stalled_since: None,
            })
        );
        assert_eq!(
            stats.get(&1),
            Some(&PartitionStats {
                records: 1,
                records_in: 1,
                bytes: rec("e", 50).len() as u64,
                position: 1,
                watermark_ms: Some(40_000),
                stalled_since: None,
            })
        );
    }

    /// Serves its records, then finishes and hands over to `children`.
    struct Parent(VecReader, Vec<(u32, Vec<Vec<u8>>)>);

    impl PartitionReader for Parent {
        fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
            self.0.poll(max, batch)
        }
        fn successors(&mut self) -> Result<Vec<Successor>, String> {
            Ok(std::mem::take(&mut self.1)
                .into_iter()
                .map(|(partition, recs)| Successor {
                    partition,
                    reader: Box::new(VecReader(recs.into(), 0)),
                })
                .collect())
        }
    }

    #[test]
    fn successors_continue_their_parents_lateness_from_offset_zero() {
        let (txns, rejects, _, positions) = run_readers(|| {
            vec![
                (
                    fresh(0),
                    Box::new(Parent(
                        VecReader(vec![rec("a", 100), rec("b", 95)].into(), 0),
                        vec![
                            (5, vec![rec("c", 89), rec("d", 91), rec("e", 50)]),
                            (6, vec![rec("f", 120)]),
                        ],
                    )) as Box<dyn PartitionReader>,
                ),
                (fresh(1), Box::new(VecReader(vec![rec("g", 200)].into(), 0))),
            ]
        });
        let mut kept: Vec<(Tick, String, u32, u64)> = txns
            .iter()
            .flat_map(|(t, v)| {
                v.iter()
                    .map(move |x| (*t, x.transaction_id().to_owned(), x.partition, x.offset))
            })
            .collect();
        kept.sort();
        let k = |t: Tick, id: &str, p: u32, o: u64| (t, id.to_owned(), p, o);
        // d (91 s) is on time against the parent's watermark (90 s), and
        // goes out at its own tick although partition 1 is at 190 s: the
        // capability waited for the successors.
        assert_eq!(
            kept,
            vec![
                k(91, "d", 5, 1),
                k(95, "b", 0, 1),
                k(100, "a", 0, 0),
                k(120, "f", 6, 0),
                k(200, "g", 1, 0)
            ]
        );
        // c and e would be on time in a fresh partition; they are late
        // against the inherited watermark.
        let rej: Vec<(u32, u64, RejectReason)> = rejects
            .iter()
            .flat_map(|(_, v)| v.iter().map(|x| (x.partition, x.offset, x.reason)))
            .collect();
        assert_eq!(
            rej,
            vec![(5, 0, RejectReason::Late), (5, 2, RejectReason::Late)]
        );
        // Each successor is announced at offset 0 with the inherited max_ts.
        for p in [5, 6] {
            let first = positions.iter().find(|e| e.partition == p).unwrap();
            assert_eq!((first.offset, first.max_ts), (0, Some(100_000)), "{p}");
        }
    }

    #[test]
    fn merchant_rows_are_a_source_with_their_own_lateness_and_rejects() {
        let row = |m: &str, secs: i64, tier: &str| {
            let ts = crate::rfc3339::format_rfc3339_ms(secs * 1000);
            format!(
                r#"{{"merchant":"{m}","valid_from":"{ts}","merchant_category":"k","risk_tier":"{tier}","country":"DE"}}"#
            )
            .into_bytes()
        };
        let rows = vec![
            row("a", 100, "LOW"),
            row("b", 89, "HIGH"), // below the watermark (90 s): LATE
            row("c", 95, "HUGE"), // BAD_FIELD
            row("a", 120, "HIGH"),
        ];
        let (versions, rejects) = timely::execute_directly(move |worker| {
            let (v, r) = worker.dataflow::<Tick, _, _>(|scope| {
                let (v, r, _) = source_of::<Merchants>(
                    scope,
                    "merchants",
                    Params::default(),
                    SourceConfig {
                        batch: 2,
                        budget: 100,
                        max_lag_ticks: 1000,
                        skip_below: Tick::MIN,
                        meter: Default::default(),
                        max_rate: None,
                    },
                    vec![(
                        fresh(3),
                        Box::new(VecReader(rows.into(), 0)) as Box<dyn PartitionReader>,
                    )],
                    ProbeHandle::new(),
                    None,
                );
                (v.capture(), r.capture())
            });
            while worker.step() {}
            (v, r)
        });
        let versions: Vec<(Tick, String, Millis, u32, u64)> = versions
            .try_iter()
            .filter_map(|e| match e {
                Event::Messages(t, d) => Some((*t.least().unwrap(), d)),
                _ => None,
            })
            .flat_map(|(t, d)| {
                d.into_iter()
                    .map(move |(m, v)| (t, m, v.valid_from, v.partition, v.offset))
            })
            .collect();
        assert_eq!(
            versions,
            vec![
                (100, "a".to_owned(), 100_000, 3, 0),
                (120, "a".to_owned(), 120_000, 3, 3)
            ]
        );
        let rejects: Vec<(RejectReason, u64)> = rejects
            .try_iter()
            .filter_map(|e| match e {
                Event::Messages(_, d) => Some(d),
                _ => None,
            })
            .flatten()
            .map(|r| (r.reason, r.offset))
            .collect();
        assert_eq!(
            rejects,
            vec![(RejectReason::Late, 1), (RejectReason::BadField, 2)]
        );
    }

    /// Serves its records, then answers `.3` (CaughtUp or Waiting) until
    /// `stop` is set.
    struct Stalling(
        VecDeque<Vec<u8>>,
        u64,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        Poll,
    );

    impl PartitionReader for Stalling {
        fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
            for _ in 0..max {
                let Some(r) = self.0.pop_front() else { break };
                batch.push(&r, self.1);
                self.1 += 1;
            }
            if !batch.is_empty() {
                Ok(Poll::Ready)
            } else if self.2.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(Poll::Finished)
            } else {
                Ok(self.3)
            }
        }
    }

    #[test]
    fn an_idle_partition_stops_holding_the_frontier_back() {
        assert!(
            frontier_passes_a_quiet_partition(Poll::CaughtUp, Duration::from_secs(10)),
            "the frontier stayed behind the idle partition"
        );
    }

    #[test]
    fn a_waiting_partition_is_not_idle() {
        // Ten idle timeouts: an outage must hold the frontier, not skip it.
        assert!(
            !frontier_passes_a_quiet_partition(Poll::Waiting, Duration::from_millis(500)),
            "the frontier passed a partition that could not be read"
        );
    }

    /// Whether the frontier passes partition 0's watermark within `wait`
    /// while partition 1 answers only `quiet`.
    fn frontier_passes_a_quiet_partition(quiet: Poll, wait: Duration) -> bool {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use timely::dataflow::operators::Probe;
        let stop = Arc::new(AtomicBool::new(false));
        timely::execute_directly({
            let stop = stop.clone();
            move |worker| {
                let probe = ProbeHandle::new();
                worker.dataflow::<Tick, _, _>(|scope| {
                    let busy = (0..=100).map(|i| rec(&format!("t{i}"), 100 + i)).collect();
                    let readers: Vec<(PartitionStart, Box<dyn PartitionReader>)> = vec![
                        (
                            PartitionStart {
                                partition: 0,
                                offset: 0,
                                max_ts: None,
                                token: None,
                            },
                            Box::new(Stalling(busy, 0, stop.clone(), Poll::CaughtUp)),
                        ),
                        // Never produces anything while the test watches.
                        (
                            PartitionStart {
                                partition: 1,
                                offset: 0,
                                max_ts: None,
                                token: None,
                            },
                            Box::new(Stalling(VecDeque::new(), 0, stop.clone(), quiet)),
                        ),
                    ];
                    let params = Params {
                        idle_timeout_ms: 50,
                        ..Params::default()
                    };
                    let config = SourceConfig {
                        batch: 16,
                        budget: 64,
                        max_lag_ticks: 1000,
                        skip_below: Tick::MIN,
                        meter: Default::default(),
                        max_rate: None,
                    };
                    let (t, _, _) =
                        source(scope, "idle", params, config, readers, ProbeHandle::new());
                    t.probe_with(&probe);
                });
                // Partition 0's watermark is 200 s − 10 s; partition 1 has
                // none, so only idleness lets the frontier get there.
                let deadline = Instant::now() + wait;
                while probe.less_than(&190) && Instant::now() < deadline {
                    worker.step_or_park(Some(Duration::from_millis(5)));
                }
                let reached = !probe.less_than(&190);
                stop.store(true, Ordering::Relaxed);
                while worker.step_or_park(Some(Duration::from_millis(5))) {}
                reached
            }
        })
    }

    /// Serves what the test puts in `.0`; with nothing to serve, answers `.1`.
    type Script = std::sync::Arc<std::sync::Mutex<(VecDeque<Vec<u8>>, Poll)>>;
    struct Scripted(Script, u64);

    impl PartitionReader for Scripted {
        fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
            let mut s = self.0.lock().unwrap();
            for _ in 0..max {
                let Some(r) = s.0.pop_front() else { break };
                batch.push(&r, self.1);
                self.1 += 1;
            }
            Ok(if batch.is_empty() { s.1 } else { Poll::Ready })
        }
        fn describe(&self) -> String {
            "scripted".to_owned()
        }
    }

    /// The sequence a hung Kafka broker produced: a partition with unread
    /// records gets nothing for many idle timeouts while another runs far
    /// ahead. It must hold the frontier all along (and be reported stalled),
    /// so its records, when they come, are on time; only once it is caught
    /// up does it go idle and let the frontier pass.
    #[test]
    fn a_partition_waiting_with_unread_records_holds_the_frontier_until_caught_up() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Probe;
        let busy: Script = Arc::new(Mutex::new((
            (0..=100).map(|i| rec(&format!("b{i}"), 100 + i)).collect(),
            Poll::CaughtUp,
        )));
        // One record (watermark 90 s), then the broker stops answering.
        let quiet: Script = Arc::new(Mutex::new((
            VecDeque::from(vec![rec("q0", 100)]),
            Poll::Waiting,
        )));
        let meter = Arc::new(Meter::default());
        let (b, q, m) = (busy.clone(), quiet.clone(), meter.clone());
        let (seen, rejects) = timely::execute_directly(move |worker| {
            let probe = ProbeHandle::new();
            let rejects = worker.dataflow::<Tick, _, _>(|scope| {
                let readers: Readers = vec![
                    (fresh(0), Box::new(Scripted(b.clone(), 0))),
                    (fresh(1), Box::new(Scripted(q.clone(), 0))),
                ];
                let params = Params {
                    idle_timeout_ms: 300,
                    ..Params::default()
                };
                let config = SourceConfig {
                    batch: 16,
                    budget: 64,
                    max_lag_ticks: 1000,
                    skip_below: Tick::MIN,
                    meter: m.clone(),
                    max_rate: None,
                };
                let (t, r, _) = source(scope, "hang", params, config, readers, ProbeHandle::new());
                t.probe_with(&probe);
                r.capture()
            });
            let frontier = || probe.with_frontier(|f| f.first().copied().unwrap_or(Tick::MAX));
            let stalled = || m.partitions.lock().unwrap()[&1].stalled_since.is_some();
            let mut seen = Vec::new();
            // Ten idle timeouts of waiting.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            seen.push((frontier(), stalled()));
            // The broker answers again: records partition 0's watermark
            // (190 s) has long passed, but partition 1's has not.
            q.lock().unwrap().0.extend([rec("q1", 105), rec("q2", 120)]);
            let until = Instant::now() + Duration::from_secs(5);
            while frontier() < 110 && Instant::now() < until {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            seen.push((frontier(), stalled()));
            // Caught up: idle after the timeout, and the frontier moves on.
            q.lock().unwrap().1 = Poll::CaughtUp;
            let until = Instant::now() + Duration::from_secs(10);
            while frontier() < 190 && Instant::now() < until {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            seen.push((frontier(), stalled()));
            b.lock().unwrap().1 = Poll::Finished;
            q.lock().unwrap().1 = Poll::Finished;
            while worker.step_or_park(Some(Duration::from_millis(5))) {}
            (seen, rejects)
        });
        assert_eq!(
            seen,
            vec![(90, true), (110, false), (190, false)],
            "(frontier, partition 1 stalled) while waiting, after its records, once caught up"
        );
        let rejects: Vec<Reject> = rejects
            .try_iter()
            .filter_map(|e| match e {
                Event::Messages(_, d) => Some(d),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(rejects.is_empty(), "nothing late: {rejects:?}");
        assert!(quiet.lock().unwrap().0.is_empty());
    }

    #[test]
    fn rejects_before_any_watermark_sit_at_the_start_of_time() {
        let (_, rejects, _, _) = run(vec![vec![b"[]".to_vec(), rec("a", 10)]]);
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].0, Tick::MIN);
        assert_eq!(rejects[0].1[0].reason, RejectReason::Malformed);
    }
}
