//! The source's timely operator: its three outputs and their capability,
//! the poll loop over partitions (round-robin, fair shares, within the flow
//! budget), successors, and the capability's downgrade to the least
//! watermark of the partitions that hold the frontier.

use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use super::flow::{self, Rate};
use super::partition::{Bounds, Env, Partition, Staged};
use super::{
    Decode, PartitionReader, PartitionStart, Poll, PositionEntry, RawBatch, SourceConfig,
    SourceStreams, Successor,
};
use crate::event::{Reject, Tick};
use crate::params::Params;

/// Builds the operator of [`super::source_of`].
pub(super) fn build<'s, D: Decode>(
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
        .map(|(start, reader)| Partition::new(start, reader, config.skip_below, now))
        .collect();
    let idle_timeout = Duration::from_millis(params.idle_timeout_ms);

    builder.build(move |caps| {
        let mut caps: Option<[Capability<Tick>; 3]> = caps.try_into().ok();
        let mut batch = RawBatch::default();
        let mut staged = Staged::<D::Out>::default();
        let mut announced = false;
        let mut rate = Rate::new(config.max_rate);
        let mut cursor = 0usize;
        // Back-pressure: the bound this source pauses for, and since when.
        let mut paused: Option<(crate::backlog::Pause, Instant)> = None;

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
            let env = Env {
                params: &params,
                meter: &config.meter,
                source: &name_s,
                idle_timeout,
            };

            // The initial positions, so a commit before any progress keeps them.
            if !announced {
                announced = true;
                let mut s = pos_session.session(&*pos_cap);
                for p in &parts {
                    s.give(p.position());
                }
            }

            // Flow control: do not run ahead of what downstream has finished
            // nor of what storage has taken (back-pressure), nor past the rate.
            let cap_time = *txn_cap.time();
            let pause = probe.with_frontier(|f| {
                flow::pause(
                    cap_time,
                    f.iter().next().copied(),
                    config.max_lag_ticks,
                    config.backlog.bytes(),
                    config.max_pending_bytes,
                )
            });
            config.backlog.switch(paused.map(|(p, _)| p), pause);
            let held_back = pause.is_some();
            // Wall time spent paused is not time without data: it must not
            // make a partition idle (letting the frontier pass records it
            // has not read yet) or stalled.
            paused = match (pause, paused) {
                (Some(p), None) => Some((p, Instant::now())),
                (Some(p), Some((_, since))) => Some((p, since)),
                (None, Some((_, since))) => {
                    let d = since.elapsed();
                    for p in &mut parts {
                        p.paused_for(d);
                    }
                    None
                }
                (None, None) => None,
            };
            let budget = rate.budget(config.budget);
            let throttled = budget == 0;
            let mut read = 0usize;
            let mut pending_any = false;
            // Successors of partitions finished in this activation, with
            // the index of their parent.
            let mut born: Vec<(Successor, usize)> = Vec::new();
            if !held_back && !throttled {
                let bounds = Bounds {
                    floor: cap_time,
                    skip_below: config.skip_below,
                };
                // Every live partition gets a fair share, starting where the
                // last activation stopped, so none is starved and the
                // watermark (their minimum) keeps moving.
                let live = parts.iter().filter(|p| !p.finished && !p.failed).count();
                let share = flow::fair_share(config.batch, budget, live);
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
                        if p.failed {
                            // Waits for the job to drop the dataflow.
                            pending_any = true;
                            continue;
                        }
                        match p.poll(share.min(budget - read), &mut batch) {
                            Ok(Poll::Finished) => match p.finish() {
                                Ok(successors) => {
                                    born.extend(successors.into_iter().map(|s| (s, idx)))
                                }
                                Err(f) => failed(&env, f),
                            },
                            Ok(Poll::Waiting) => {
                                pending_any = true;
                                p.waiting(&env);
                            }
                            Ok(Poll::CaughtUp) => {
                                pending_any = true;
                                p.caught_up(&env);
                            }
                            Ok(Poll::Ready) => {}
                            Err(f) => {
                                pending_any = true;
                                failed(&env, f);
                            }
                        }
                        if batch.is_empty() {
                            continue;
                        }
                        progressed = true;
                        p.received(&mut batch, &config.meter);
                        read += batch.len();
                        let read_at = Instant::now();
                        for (bytes, offset) in batch.iter() {
                            p.classify::<D>(bytes, offset, &params, bounds, &mut staged);
                        }
                        p.report(&env, &batch, &staged, read_at);
                        emit_sorted(&mut staged.accepted, txn_cap, &mut txn_session);
                        emit_sorted(&mut staged.rejected, rej_cap, &mut rej_session);
                        pos_session.session(&*pos_cap).give(p.position());
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
                    let start = PartitionStart {
                        partition: succ.partition,
                        offset: 0,
                        max_ts: parts[parent].max_ts,
                        token: None,
                    };
                    let p = Partition::new(start, succ.reader, config.skip_below, Instant::now());
                    s.give(p.position());
                    parts.push(p);
                }
            }

            let followed = follow_in
                .as_ref()
                .and_then(|_| frontiers[0].frontier().iter().min().copied());
            let Some(wm) = capability_tick(&parts, &params, followed) else {
                config.backlog.switch(paused.map(|(p, _)| p), None);
                caps = None;
                return;
            };
            if wm > *txn_cap.time() {
                txn_cap.downgrade(&wm);
                rej_cap.downgrade(&wm);
                pos_cap.downgrade(&wm);
            }
            rate.consumed(read);
            match flow::reactivate_after(held_back, throttled, pending_any, read) {
                Some(delay) => activator.activate_after(delay),
                None => activator.activate(),
            }
        }
    });
    (txns, rejects, positions)
}

/// A partition's reader failed: the process's meter keeps the first
/// failure, for the job to stop with. The partition holds the capability
/// where it is ([`Partition::failed`]).
fn failed(env: &Env<'_>, f: super::SourceFailure) {
    env.meter.fail(f);
}

/// The worker's new capability: the least watermark of live partitions
/// that are not idle (a failed partition is neither finished nor idle, so
/// the capability stays where it is). When all are idle, the largest watermark, or the
/// `followed` stream's time if it is ahead. `None` once every partition
/// has finished.
fn capability_tick(parts: &[Partition], params: &Params, followed: Option<Tick>) -> Option<Tick> {
    let live = || parts.iter().filter(|p| !p.finished);
    let active = live().filter(|p| !p.idle);
    if let Some(wm) = active.map(|p| p.watermark_tick(params)).min() {
        return Some(wm);
    }
    // All idle: hold at the largest watermark until one produces again, or
    // follow the followed stream's time.
    let held = live().map(|p| p.watermark_tick(params)).max()?;
    Some(followed.map_or(held, |f| held.max(f)))
}

/// Sends the staged records, sorted by tick, each at its own tick.
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
