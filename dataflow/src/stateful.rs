//! The frontier-driven frame that every stateful operator runs in.
//!
//! Inputs are buffered by tick and handed to the operator's [`Logic`] in tick
//! order only once the input frontier has passed them, so results never
//! depend on arrival order. Epoch markers (see [`crate::ticker`]) say where a
//! commit boundary `B` falls: the frame then processes exactly the ticks
//! below `B`, asks the logic for a snapshot, and reports it, before going on.
//! The frame holds one capability per pending time (buffered input, an open
//! window's emission tick, an undelivered snapshot) and releases each as soon
//! as the frontier passes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::{Scope, Stream, StreamVec};
use timely::progress::frontier::AntichainRef;

use crate::event::Tick;

/// Commit boundaries, decided by the ticker and broadcast to every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Marker {
    /// Epoch boundary at this tick: state and outputs for all ticks below it
    /// are committed together.
    Commit(Tick),
    /// The input has ended: flush everything and snapshot what remains.
    Final,
    /// A stop was requested on the process with this index: the whole job
    /// commits the next boundary (or nothing, over quiet sources) and leaves.
    Stop(u32),
    /// The stop is done (`committed`: its commit is in; otherwise the
    /// sources were quiet and nothing new was committed): every worker
    /// leaves; operators keep their state unflushed, as for any stop.
    Leave { committed: bool },
}

/// What stateful operators tell the checkpoint layer besides their rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Report {
    /// An operator's state, split by key group, as of a commit boundary
    /// (`None`: after the input ended).
    State {
        op: String,
        boundary: Option<Tick>,
        groups: Vec<(u32, Vec<u8>)>,
        /// Keys in the state (this worker's).
        keys: u64,
    },
    /// Duplicate copies decided at this report's time.
    Duplicates(u64),
}

/// Where a logic puts what it produces; each item carries its tick.
pub struct Emit<O> {
    pub rows: Vec<(Tick, O)>,
    pub duplicates: Vec<(Tick, u64)>,
}

impl<O> Default for Emit<O> {
    fn default() -> Self {
        Emit {
            rows: Vec::new(),
            duplicates: Vec::new(),
        }
    }
}

/// The pure part of a stateful operator.
pub trait Logic: 'static {
    type In: timely::ExchangeData;
    type Out: timely::ExchangeData;

    /// Stable name, used to find this operator's state on restore.
    fn name(&self) -> String;
    /// All inputs at tick `t`, once the frontier has passed `t`; ticks arrive
    /// in increasing order.
    fn on_tick(&mut self, t: Tick, batch: &mut Vec<Self::In>, out: &mut Emit<Self::Out>);
    /// Emit every result that is final and whose tick is below `limit`
    /// (`None`: the input has ended, emit everything).
    fn flush(&mut self, limit: Option<Tick>, out: &mut Emit<Self::Out>);
    /// The earliest tick at which this logic may still emit.
    fn pending(&self) -> Option<Tick>;
    /// State by key group.
    fn snapshot(&self) -> Vec<(u32, Vec<u8>)>;
    /// How many keys the state holds (for the state-size metric).
    fn keys(&self) -> u64;
}

/// Runs `logic` over `input` (partitioned by `pact`) with commit `markers`.
/// Returns the rows and the reports.
pub fn stateful<'s, L, P>(
    input: StreamVec<'s, Tick, L::In>,
    pact: P,
    markers: StreamVec<'s, Tick, Marker>,
    mut logic: L,
) -> (StreamVec<'s, Tick, L::Out>, StreamVec<'s, Tick, Report>)
where
    L: Logic,
    P: ParallelizationContract<Tick, Vec<L::In>>,
{
    let scope: Scope<'s, Tick> = input.scope();
    let mut builder = OperatorBuilder::new(logic.name(), scope);
    let mut data_in = builder.new_input(input, pact);
    let mut marker_in = builder.new_input(markers, Pipeline);
    let (rows_out, rows_stream) = builder.new_output();
    let (reports_out, reports_stream) = builder.new_output();
    let mut rows_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<L::Out>>>::from(
            rows_out,
        );
    let mut reports_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Report>>,
    >::from(reports_out);

    builder.build(move |initial| {
        // The initial capabilities cover what restored state may emit; the
        // first activation downgrades them to exactly that.
        let mut initial = initial.into_iter();
        let mut row_caps = CapabilitySet::from_elem(initial.next().expect("rows capability"));
        let mut report_caps = CapabilitySet::from_elem(initial.next().expect("reports capability"));
        let mut buffered: BTreeMap<Tick, Vec<L::In>> = BTreeMap::new();
        let mut boundaries: BTreeSet<Tick> = BTreeSet::new();
        // The time of the `Final` marker, once seen: held to report the last snapshot.
        let mut final_at: Option<Tick> = None;
        let mut finished = false;
        let mut emit = Emit::<L::Out>::default();

        move |frontiers| {
            data_in.for_each(|cap, data| {
                let t = *cap.least().expect("data carries a time");
                row_caps.insert(cap.delayed(&t, 0));
                report_caps.insert(cap.delayed(&t, 1));
                let slot = buffered.entry(t).or_default();
                if slot.is_empty() {
                    std::mem::swap(slot, data);
                } else {
                    slot.append(data);
                }
            });
            marker_in.for_each(|cap, data| {
                // `Stop` and `Leave` need no capability: the workers drop
                // the dataflow after them.
                data.retain(|m| matches!(m, Marker::Commit(_) | Marker::Final));
                if data.is_empty() {
                    return;
                }
                let t = *cap.least().expect("marker carries a time");
                row_caps.insert(cap.delayed(&t, 0));
                report_caps.insert(cap.delayed(&t, 1));
                for m in data.drain(..) {
                    match m {
                        Marker::Commit(b) => {
                            boundaries.insert(b);
                        }
                        Marker::Final => final_at = Some(t),
                        Marker::Stop(_) | Marker::Leave { .. } => {}
                    }
                }
            });
            if finished {
                return;
            }

            // The frontier across both inputs; `None` once both are closed.
            let frontier = min_frontier(frontiers[0].frontier(), frontiers[1].frontier());

            let mut rows = rows_out.activate();
            let mut reports = reports_out.activate();
            let send = |emit: &mut Emit<L::Out>, rows: &mut _, reports: &mut _| {
                send_rows(&row_caps, rows, &mut emit.rows);
                send_duplicates(&report_caps, reports, &mut emit.duplicates);
            };

            // Commit boundaries the frontier has passed, in order.
            while let Some(&b) = boundaries.first() {
                if frontier.is_some_and(|f| f < b) {
                    break;
                }
                boundaries.pop_first();
                advance(&mut logic, &mut buffered, b, Some(b), &mut emit);
                send(&mut emit, &mut rows, &mut reports);
                let report = Report::State {
                    op: logic.name(),
                    boundary: Some(b),
                    groups: logic.snapshot(),
                    keys: logic.keys(),
                };
                reports.session(&report_caps.delayed(&(b - 1))).give(report);
            }

            match frontier {
                Some(f) => {
                    advance(&mut logic, &mut buffered, f, f.checked_add(1), &mut emit);
                    send(&mut emit, &mut rows, &mut reports);
                    // Hold exactly what may still be emitted.
                    let mut hold: Vec<Tick> = Vec::new();
                    hold.extend(buffered.keys().next().copied());
                    hold.extend(logic.pending());
                    let mut report_hold = hold.clone();
                    report_hold.extend(boundaries.first().map(|b| b - 1));
                    report_hold.extend(final_at);
                    downgrade(&mut row_caps, &hold);
                    downgrade(&mut report_caps, &report_hold);
                }
                None => {
                    // Input ended: watermarks are at +infinity.
                    advance(&mut logic, &mut buffered, Tick::MAX, None, &mut emit);
                    send(&mut emit, &mut rows, &mut reports);
                    if final_at.is_some() {
                        let report = Report::State {
                            op: logic.name(),
                            boundary: None,
                            groups: logic.snapshot(),
                            keys: logic.keys(),
                        };
                        let t = report_caps.iter().map(|c| *c.time()).min();
                        if let Some(t) = t {
                            reports.session(&report_caps.delayed(&t)).give(report);
                        }
                    }
                    row_caps = CapabilitySet::new();
                    report_caps = CapabilitySet::new();
                    finished = true;
                }
            }
        }
    });
    (rows_stream, reports_stream)
}

fn min_frontier(a: AntichainRef<Tick>, b: AntichainRef<Tick>) -> Option<Tick> {
    a.iter().chain(b.iter()).copied().min()
}

/// Process buffered ticks below `input_limit`, then flush outputs below `output_limit`.
fn advance<L: Logic>(
    logic: &mut L,
    buffered: &mut BTreeMap<Tick, Vec<L::In>>,
    input_limit: Tick,
    output_limit: Option<Tick>,
    emit: &mut Emit<L::Out>,
) {
    while let Some(entry) = buffered.first_entry() {
        if *entry.key() >= input_limit {
            break;
        }
        let (t, mut batch) = entry.remove_entry();
        logic.on_tick(t, &mut batch, emit);
    }
    logic.flush(output_limit, emit);
}

fn downgrade(caps: &mut CapabilitySet<Tick>, hold: &[Tick]) {
    let held: Vec<Tick> = caps.iter().map(|c| *c.time()).collect();
    let r = match hold.iter().min() {
        Some(&t) => caps.try_downgrade([t]),
        None => caps.try_downgrade::<Tick, _>([]),
    };
    if r.is_err() {
        panic!("downgrade to {hold:?} from {held:?}");
    }
}

type RowSession<'a, O> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Tick,
    timely::container::CapacityContainerBuilder<Vec<O>>,
>;

fn send_rows<O: timely::ExchangeData>(
    caps: &CapabilitySet<Tick>,
    out: &mut RowSession<'_, O>,
    rows: &mut Vec<(Tick, O)>,
) {
    if rows.is_empty() {
        return;
    }
    // Logics emit in near tick order; a stable sort keeps each tick's order.
    if !rows.windows(2).all(|w| w[0].0 <= w[1].0) {
        rows.sort_by_key(|r| r.0);
    }
    let mut iter = rows.drain(..).peekable();
    while let Some((t, first)) = iter.next() {
        let cap = caps.delayed(&t);
        let mut session = out.session(&cap);
        session.give(first);
        while let Some((_, row)) = iter.next_if(|(t2, _)| *t2 == t) {
            session.give(row);
        }
    }
}

fn send_duplicates(
    caps: &CapabilitySet<Tick>,
    out: &mut RowSession<'_, Report>,
    dups: &mut Vec<(Tick, u64)>,
) {
    for (t, n) in dups.drain(..) {
        out.session(&caps.delayed(&t)).give(Report::Duplicates(n));
    }
}

/// A stream of `Report`s, for wiring.
pub type Reports<'s> = Stream<'s, Tick, Vec<Report>>;
