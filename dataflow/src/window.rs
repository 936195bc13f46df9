//! Event-time windows (SPEC 6): tumbling and sliding over panes, and sessions.
//!
//! Tumbling and sliding windows keep one pane per slide, so a pane never
//! straddles an epoch boundary and a window is the merge of its panes. A
//! window `[s, e)` is emitted at tick `e / tick`, once the frontier has passed
//! every record that could fall in it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use crate::event::{key_group, key_hash, FastMap, Millis, Tick, Txn, WindowRow};
use crate::params::{WindowKind, WindowSpec};
use crate::stateful::{Emit, Logic};
use crate::time::{floor_to, tick_of};

/// What a window operator takes: a partial aggregate of one key's records,
/// folded on the worker that read them before the exchange (see [`PreAgg`]),
/// so a hot key costs one partial per tick and worker, not one message per
/// record. `first`/`last` are the earliest and latest event times folded in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinIn {
    pub first: Millis,
    pub last: Millis,
    pub key: String,
    pub agg: Agg,
}

impl WinIn {
    /// One record's partial.
    pub fn one(time: Millis, cents: i64, key: String) -> Self {
        WinIn {
            first: time,
            last: time,
            key,
            agg: Agg::one(cents),
        }
    }
}

/// The group key of a transaction under `spec`: the values joined with `|`,
/// each with `|` and `\` escaped by `\` (see `zscore::unescape_key`). A
/// null value (an enriched field without a reference row) is [`NULL_VALUE`],
/// which no escaped value can be.
pub fn group_key(spec: &WindowSpec, t: &Txn) -> String {
    let mut key = String::new();
    write_group_key(spec, t, &mut key);
    key
}

/// [`group_key`] into a reused buffer.
pub fn write_group_key(spec: &WindowSpec, t: &Txn, key: &mut String) {
    key.clear();
    for (i, f) in spec.group_by.iter().enumerate() {
        if i > 0 {
            key.push('|');
        }
        let Some(v) = t.group_field(*f) else {
            key.push_str(NULL_VALUE);
            continue;
        };
        if !v.contains(['|', '\\']) {
            key.push_str(v);
            continue;
        }
        for c in v.chars() {
            if c == '|' || c == '\\' {
                key.push('\\');
            }
            key.push(c);
        }
    }
}

/// Local pre-aggregation of one window spec's input, per tick and key,
/// before the exchange (Flink's local-global aggregation). A partial only
/// ever holds records the window operator would treat as one unit: for
/// panes, records of one pane; for sessions, a chain of records each
/// within the gap of another, which joins or starts a session as a whole
/// exactly as its records would one by one in time order.
pub struct PreAgg {
    spec: WindowSpec,
    /// The key being looked up, reused so only a new key allocates.
    buf: String,
    open: BTreeMap<Tick, Partials>,
}

/// A partial without its key (the map holds the key).
#[derive(Clone, Copy)]
struct Part {
    first: Millis,
    last: Millis,
    agg: Agg,
}

impl Part {
    fn one(time: Millis, cents: i64) -> Self {
        Part {
            first: time,
            last: time,
            agg: Agg::one(cents),
        }
    }
    fn into_win_in(self, key: String) -> WinIn {
        WinIn {
            first: self.first,
            last: self.last,
            key,
            agg: self.agg,
        }
    }
    /// Whether the record at `time` belongs in this partial under `kind`.
    fn fits(&self, kind: &WindowKind, time: Millis) -> bool {
        match *kind {
            WindowKind::Tumbling { size_ms: slide }
            | WindowKind::Sliding {
                slide_ms: slide, ..
            } => floor_to(time, slide) == floor_to(self.first, slide),
            WindowKind::Session { gap_ms } => {
                time >= self.first - gap_ms && time <= self.last + gap_ms
            }
        }
    }
}

#[derive(Default)]
struct Partials {
    by_key: FastMap<String, Part>,
    /// Partials pushed out of `by_key` by a record they could not take.
    done: Vec<WinIn>,
}

impl PreAgg {
    pub fn new(spec: &WindowSpec) -> Self {
        PreAgg {
            spec: spec.clone(),
            buf: String::new(),
            open: BTreeMap::new(),
        }
    }

    /// Folds records at tick `t` in.
    pub fn add(&mut self, t: Tick, txns: &[Txn]) {
        let open = self.open.entry(t).or_default();
        for x in txns {
            write_group_key(&self.spec, x, &mut self.buf);
            let (time, cents) = (x.event_time, x.amount_cents);
            match open.by_key.get_mut(self.buf.as_str()) {
                Some(p) if p.fits(&self.spec.kind, time) => {
                    p.first = p.first.min(time);
                    p.last = p.last.max(time);
                    p.agg.merge(&Agg::one(cents));
                }
                Some(p) => {
                    let old = std::mem::replace(p, Part::one(time, cents));
                    open.done.push(old.into_win_in(self.buf.clone()));
                }
                None => {
                    open.by_key.insert(self.buf.clone(), Part::one(time, cents));
                }
            }
        }
    }

    /// Takes the partials of every tick below `limit` (all, for `None`).
    pub fn take_below(&mut self, limit: Option<Tick>) -> Vec<(Tick, Vec<WinIn>)> {
        let mut out = Vec::new();
        while let Some(e) = self.open.first_entry() {
            if limit.is_some_and(|l| *e.key() >= l) {
                break;
            }
            let (t, p) = e.remove_entry();
            let mut v = p.done;
            v.extend(p.by_key.into_iter().map(|(k, part)| part.into_win_in(k)));
            out.push((t, v));
        }
        out
    }

    /// The earliest tick with partials not yet taken.
    pub fn pending(&self) -> Option<Tick> {
        self.open.keys().next().copied()
    }
}

/// A null group value inside a key: `\N`, since escaping only ever puts
/// `|` or `\` after a `\`.
pub const NULL_VALUE: &str = "\\N";

#[inline]
pub fn route_key(key: &str) -> u64 {
    crate::event::route(key_hash(key.as_bytes()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agg {
    pub count: i64,
    pub sum: i64,
    pub min: i64,
    pub max: i64,
}

impl Agg {
    pub fn one(cents: i64) -> Self {
        Agg {
            count: 1,
            sum: cents,
            min: cents,
            max: cents,
        }
    }
    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    first: Millis,
    last: Millis,
    agg: Agg,
}

pub struct Windows {
    spec_index: u16,
    name: String,
    kind: WindowKind,
    tick_ms: i64,
    /// Tumbling/sliding: pane start → key → aggregate.
    panes: BTreeMap<Millis, FastMap<String, Agg>>,
    /// Tumbling/sliding: the next window end not yet emitted.
    next_end: Millis,
    /// Sessions: key → open session, and a queue with one entry per open
    /// session at or before its emission tick (an extended session is moved
    /// on when its entry comes due, not on every record).
    sessions: FastMap<String, Session>,
    closing: BinaryHeap<Reverse<(Tick, String)>>,
    /// Sessions ended by a later record of their key, waiting for their
    /// emission tick (they are state until then: a snapshot must hold them).
    closed: BTreeMap<(Tick, String, Millis), Session>,
}

#[derive(Serialize, Deserialize)]
enum GroupState {
    Panes(Vec<(Millis, String, Agg)>),
    Sessions(Vec<(String, Session)>),
    Closed(Vec<(Tick, String, Session)>),
}

impl Windows {
    pub fn new(spec_index: usize, spec: &WindowSpec, tick_ms: i64) -> Self {
        Windows {
            spec_index: spec_index as u16,
            name: format!("window:{}", spec.name),
            kind: spec.kind.clone(),
            tick_ms,
            panes: BTreeMap::new(),
            next_end: Millis::MIN,
            sessions: FastMap::default(),
            closing: BinaryHeap::new(),
            closed: BTreeMap::new(),
        }
    }

    fn size_slide(&self) -> (i64, i64) {
        match self.kind {
            WindowKind::Tumbling { size_ms } => (size_ms, size_ms),
            WindowKind::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            WindowKind::Session { .. } => unreachable!("sessions have no panes"),
        }
    }

    fn session_emit_tick(&self, s: &Session, gap: i64) -> Tick {
        tick_of(s.last + gap, self.tick_ms) + 1
    }

    /// Restore state committed at `boundary`: every window ending below it
    /// has been emitted.
    pub fn restore(&mut self, boundary: Tick, groups: &[(u32, Vec<u8>)]) {
        if !matches!(self.kind, WindowKind::Session { .. }) {
            let (_, slide) = self.size_slide();
            let b = boundary.saturating_mul(self.tick_ms);
            self.next_end = floor_to(b, slide) + if b.rem_euclid(slide) == 0 { 0 } else { slide };
        }
        for (_, bytes) in groups {
            match bincode::deserialize(bytes).expect("window state decodes") {
                GroupState::Panes(v) => {
                    for (p, k, a) in v {
                        self.panes.entry(p).or_default().insert(k, a);
                    }
                }
                GroupState::Sessions(v) => {
                    let WindowKind::Session { gap_ms } = self.kind else {
                        panic!("session state restored into a {:?} window", self.kind)
                    };
                    for (k, s) in v {
                        let t = self.session_emit_tick(&s, gap_ms);
                        self.closing.push(Reverse((t, k.clone())));
                        self.sessions.insert(k, s);
                    }
                }
                GroupState::Closed(v) => {
                    for (t, k, s) in v {
                        self.closed.insert((t, k, s.first), s);
                    }
                }
            }
        }
    }

    /// The next window end to emit for panes held, if any.
    fn next_pane_end(&self) -> Option<Millis> {
        let (_, slide) = self.size_slide();
        let first = *self.panes.keys().next()?;
        Some((first + slide).max(self.next_end))
    }

    fn row(&self, start: Millis, end: Millis, key: String, a: Agg) -> WindowRow {
        WindowRow {
            spec: self.spec_index,
            start,
            end,
            key,
            count: a.count,
            sum_cents: a.sum,
            min_cents: a.min,
            max_cents: a.max,
        }
    }
}

impl Logic for Windows {
    type In = WinIn;
    type Out = WindowRow;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn on_tick(&mut self, _t: Tick, batch: &mut Vec<WinIn>, _out: &mut Emit<WindowRow>) {
        match self.kind {
            WindowKind::Session { gap_ms } => {
                // Partials are chains (see `PreAgg`): each joins or starts a
                // session as its records would, taken in time order.
                batch.sort_by_key(|r| r.first);
                for r in batch.drain(..) {
                    match self.sessions.get_mut(&r.key) {
                        // The key's queue entry stays where it is: it comes
                        // due no later than the session, and is moved on then.
                        Some(s) if r.first <= s.last + gap_ms => {
                            s.last = s.last.max(r.last);
                            s.agg.merge(&r.agg);
                        }
                        Some(s) => {
                            let fresh = Session {
                                first: r.first,
                                last: r.last,
                                agg: r.agg,
                            };
                            let old = std::mem::replace(s, fresh);
                            let ot = self.session_emit_tick(&old, gap_ms);
                            self.closed.insert((ot, r.key, old.first), old);
                        }
                        None => {
                            let fresh = Session {
                                first: r.first,
                                last: r.last,
                                agg: r.agg,
                            };
                            let t = self.session_emit_tick(&fresh, gap_ms);
                            self.closing.push(Reverse((t, r.key.clone())));
                            self.sessions.insert(r.key, fresh);
                        }
                    }
                }
            }
            _ => {
                let (_, slide) = self.size_slide();
                for r in batch.drain(..) {
                    let pane = floor_to(r.first, slide);
                    let panes = self.panes.entry(pane).or_default();
                    match panes.get_mut(&r.key) {
                        Some(a) => a.merge(&r.agg),
                        None => {
                            panes.insert(r.key, r.agg);
                        }
                    }
                }
            }
        }
    }

    fn flush(&mut self, limit: Option<Tick>, out: &mut Emit<WindowRow>) {
        let before = |t: Tick| limit.is_none_or(|l| t < l);
        match self.kind {
            WindowKind::Session { gap_ms } => {
                while let Some(e) = self.closed.first_entry() {
                    if !before(e.key().0) {
                        break;
                    }
                    let ((t, key, _), s) = e.remove_entry();
                    let row = self.row(s.first, s.last + gap_ms, key, s.agg);
                    out.rows.push((t, row));
                }
                while let Some(Reverse((t, _))) = self.closing.peek() {
                    if !before(*t) {
                        break;
                    }
                    let Reverse((t, key)) = self.closing.pop().unwrap();
                    let Some(current) = self
                        .sessions
                        .get(&key)
                        .map(|s| self.session_emit_tick(s, gap_ms))
                    else {
                        continue;
                    };
                    if current == t {
                        let s = self.sessions.remove(&key).unwrap();
                        let row = self.row(s.first, s.last + gap_ms, key, s.agg);
                        out.rows.push((t, row));
                    } else {
                        // Extended since it was queued: queue it for its current end.
                        self.closing.push(Reverse((current, key)));
                    }
                }
            }
            _ => {
                let (size, slide) = self.size_slide();
                while let Some(end) = self.next_pane_end() {
                    let t = tick_of(end, self.tick_ms);
                    if !before(t) {
                        break;
                    }
                    let start = end - size;
                    let mut merged: FastMap<&str, Agg> = FastMap::default();
                    for (_, keys) in self.panes.range(start..end) {
                        for (k, a) in keys {
                            merged
                                .entry(k.as_str())
                                .and_modify(|m| m.merge(a))
                                .or_insert(*a);
                        }
                    }
                    let mut rows: Vec<WindowRow> = merged
                        .into_iter()
                        .map(|(k, a)| self.row(start, end, k.to_owned(), a))
                        .collect();
                    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                    out.rows.extend(rows.into_iter().map(|r| (t, r)));
                    self.next_end = end + slide;
                    // Panes no later window needs.
                    while let Some(e) = self.panes.first_entry() {
                        if *e.key() + size <= end {
                            e.remove();
                        } else {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn pending(&self) -> Option<Tick> {
        match self.kind {
            WindowKind::Session { .. } => {
                let open = self.closing.peek().map(|Reverse((t, _))| *t);
                let closed = self.closed.keys().next().map(|k| k.0);
                open.into_iter().chain(closed).min()
            }
            _ => self.next_pane_end().map(|e| tick_of(e, self.tick_ms)),
        }
    }

    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        let mut panes: BTreeMap<u32, Vec<(Millis, String, Agg)>> = BTreeMap::new();
        let mut sessions: BTreeMap<u32, Vec<(String, Session)>> = BTreeMap::new();
        for (p, keys) in &self.panes {
            for (k, a) in keys {
                let g = key_group(key_hash(k.as_bytes()));
                panes.entry(g).or_default().push((*p, k.clone(), *a));
            }
        }
        for (k, s) in &self.sessions {
            let g = key_group(key_hash(k.as_bytes()));
            sessions.entry(g).or_default().push((k.clone(), s.clone()));
        }
        let mut closed: BTreeMap<u32, Vec<(Tick, String, Session)>> = BTreeMap::new();
        for ((t, k, _), s) in &self.closed {
            let g = key_group(key_hash(k.as_bytes()));
            closed
                .entry(g)
                .or_default()
                .push((*t, k.clone(), s.clone()));
        }
        let enc = |s: &GroupState| bincode::serialize(s).expect("encode");
        let mut out: Vec<(u32, Vec<u8>)> = panes
            .into_iter()
            .map(|(g, mut v)| {
                v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                (g, enc(&GroupState::Panes(v)))
            })
            .collect();
        out.extend(sessions.into_iter().map(|(g, mut v)| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            (g, enc(&GroupState::Sessions(v)))
        }));
        out.extend(
            closed
                .into_iter()
                .map(|(g, v)| (g, enc(&GroupState::Closed(v)))),
        );
        out
    }
    fn keys(&self) -> u64 {
        let panes: usize = self.panes.values().map(|p| p.len()).sum();
        (panes + self.sessions.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::GroupField;
    use crate::params::Aggregate;

    const S: i64 = 1000;
    const M: i64 = 60 * S;

    fn spec(kind: WindowKind) -> WindowSpec {
        WindowSpec {
            name: "w".into(),
            kind,
            group_by: vec![GroupField::Status],
            aggregates: vec![Aggregate::Count],
        }
    }

    fn rec(time: Millis, cents: i64, key: &str) -> WinIn {
        WinIn::one(time, cents, key.into())
    }

    /// Feeds records tick by tick with the frontier right behind them, then
    /// ends the input; returns every row with its emission tick.
    fn run(kind: WindowKind, records: Vec<WinIn>) -> Vec<(Tick, WindowRow)> {
        let mut w = Windows::new(0, &spec(kind), S);
        let mut out = Emit::default();
        let mut by_tick: BTreeMap<Tick, Vec<WinIn>> = BTreeMap::new();
        for r in records {
            by_tick.entry(tick_of(r.first, S)).or_default().push(r);
        }
        for (t, mut batch) in by_tick {
            w.flush(Some(t), &mut out);
            w.on_tick(t, &mut batch, &mut out);
            w.flush(Some(t + 1), &mut out);
        }
        w.flush(None, &mut out);
        out.rows
    }

    fn brief(rows: &[(Tick, WindowRow)]) -> Vec<(Tick, Millis, Millis, &str, i64, i64)> {
        rows.iter()
            .map(|(t, r)| (*t, r.start, r.end, r.key.as_str(), r.count, r.sum_cents))
            .collect()
    }

    #[test]
    fn tumbling_windows_are_half_open_and_emitted_at_their_end() {
        let rows = run(
            WindowKind::Tumbling { size_ms: M },
            vec![
                rec(0, 1, "A"),
                rec(M - 1, 2, "A"),
                rec(M, 4, "A"),
                rec(30 * S, 8, "B"),
            ],
        );
        assert_eq!(
            brief(&rows),
            vec![
                (60, 0, M, "A", 2, 3),
                (60, 0, M, "B", 1, 8),
                (120, M, 2 * M, "A", 1, 4)
            ]
        );
    }

    #[test]
    fn tumbling_window_waits_for_the_frontier() {
        let mut w = Windows::new(0, &spec(WindowKind::Tumbling { size_ms: M }), S);
        let mut out = Emit::default();
        w.on_tick(10, &mut vec![rec(10 * S, 5, "A")], &mut out);
        w.flush(Some(60), &mut out); // ticks below 60 final: the window ends at 60, not yet
        assert!(out.rows.is_empty());
        assert_eq!(w.pending(), Some(60));
        w.flush(Some(61), &mut out);
        assert_eq!(out.rows.len(), 1);
        assert_eq!(w.pending(), None);
    }

    #[test]
    fn sliding_window_membership() {
        // One record at 2m30s belongs to the five 5-minute windows starting
        // at -2m, -1m, 0, 1m and 2m.
        let rows = run(
            WindowKind::Sliding {
                size_ms: 5 * M,
                slide_ms: M,
            },
            vec![rec(2 * M + 30 * S, 7, "A")],
        );
        let starts: Vec<Millis> = rows.iter().map(|(_, r)| r.start).collect();
        assert_eq!(starts, vec![-2 * M, -M, 0, M, 2 * M]);
        assert!(rows
            .iter()
            .all(|(t, r)| *t == r.end / S && r.end - r.start == 5 * M && r.count == 1));
    }

    #[test]
    fn sliding_window_merges_panes() {
        let rows = run(
            WindowKind::Sliding {
                size_ms: 2 * M,
                slide_ms: M,
            },
            vec![rec(10 * S, 1, "A"), rec(M + 10 * S, 2, "A")],
        );
        assert_eq!(
            brief(&rows),
            vec![
                (60, -M, M, "A", 1, 1),
                (120, 0, 2 * M, "A", 2, 3),
                (180, M, 3 * M, "A", 1, 2)
            ]
        );
    }

    #[test]
    fn session_joins_within_gap_inclusive_and_closes_after_it() {
        let gap = 30 * M;
        let rows = run(
            WindowKind::Session { gap_ms: gap },
            vec![
                rec(0, 1, "A"),
                rec(10 * M, 2, "A"),
                rec(40 * M, 4, "A"), // exactly `gap` after the last event: joins
                rec(70 * M + 1, 8, "A"), // one ms past last + gap: a new session
            ],
        );
        assert_eq!(
            brief(&rows),
            vec![
                (tick_of(70 * M, S) + 1, 0, 70 * M, "A", 3, 7),
                (
                    tick_of(100 * M + 1, S) + 1,
                    70 * M + 1,
                    100 * M + 1,
                    "A",
                    1,
                    8
                ),
            ]
        );
    }

    #[test]
    fn snapshot_and_restore_continue_exactly() {
        // Run to a boundary, snapshot, restore into a fresh operator, and
        // finish: the rows after the boundary equal an uninterrupted run's.
        let kind = WindowKind::Sliding {
            size_ms: 3 * M,
            slide_ms: M,
        };
        let records = || {
            vec![
                rec(10 * S, 1, "A"),
                rec(70 * S, 2, "A"),
                rec(130 * S, 4, "B"),
            ]
        };
        let full = run(kind.clone(), records());
        let boundary = 100; // tick
        let mut w = Windows::new(0, &spec(kind.clone()), S);
        let mut out = Emit::default();
        for r in records()
            .into_iter()
            .filter(|r| tick_of(r.first, S) < boundary)
        {
            let t = tick_of(r.first, S);
            w.on_tick(t, &mut vec![r], &mut out);
        }
        w.flush(Some(boundary), &mut out);
        let mut restored = Windows::new(0, &spec(kind), S);
        restored.restore(boundary, &w.snapshot());
        let mut after = Emit::default();
        for r in records()
            .into_iter()
            .filter(|r| tick_of(r.first, S) >= boundary)
        {
            let t = tick_of(r.first, S);
            restored.on_tick(t, &mut vec![r], &mut after);
        }
        restored.flush(None, &mut after);
        let mut both = out.rows;
        both.extend(after.rows);
        assert_eq!(brief(&both), brief(&full));
    }

    /// Pre-aggregated partials give exactly the rows the records would one
    /// by one: panes and sessions, out-of-order times within and across
    /// ticks, several upstream workers folding the same tick.
    #[test]
    fn pre_aggregation_equals_record_at_a_time() {
        use crate::event::{Currency, Status, TxnText};
        let kinds = [
            WindowKind::Tumbling { size_ms: M },
            WindowKind::Sliding {
                size_ms: 3 * M,
                slide_ms: M,
            },
            WindowKind::Session { gap_ms: 2 * S },
            WindowKind::Session { gap_ms: 30 * M },
        ];
        // A fixed pseudo-random stream: times jitter backwards by up to 5 s
        // (arriving in the tick of the stream time), few keys.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let statuses = [Status::Completed, Status::Pending, Status::Failed];
        let mut ticks: BTreeMap<Tick, Vec<Vec<Txn>>> = BTreeMap::new();
        for i in 0..4000i64 {
            let base = i * 150;
            let time = base - (next() % 5000) as i64;
            let status = statuses[(next() % 3) as usize];
            let txn = Txn::new(
                time,
                1 + (next() % 1000) as i64,
                Currency::Usd,
                status,
                TxnText::default(),
                0,
                i as u64,
            );
            // Two upstream workers, each folding its own share of a tick.
            let slot = ticks
                .entry(tick_of(base, S))
                .or_insert_with(|| vec![Vec::new(), Vec::new()]);
            slot[(next() % 2) as usize].push(txn);
        }
        for kind in kinds {
            let spec = spec(kind.clone());
            let run = |pre: bool| {
                let mut w = Windows::new(0, &spec, S);
                let mut out = Emit::default();
                for (&t, workers) in &ticks {
                    let mut batch: Vec<WinIn> = Vec::new();
                    for txns in workers {
                        if pre {
                            let mut p = PreAgg::new(&spec);
                            p.add(t, txns);
                            for (_, v) in p.take_below(None) {
                                batch.extend(v);
                            }
                        } else {
                            batch.extend(txns.iter().map(|x| {
                                WinIn::one(x.event_time, x.amount_cents, group_key(&spec, x))
                            }));
                        }
                    }
                    w.flush(Some(t), &mut out);
                    w.on_tick(t, &mut batch, &mut out);
                    w.flush(Some(t + 1), &mut out);
                }
                w.flush(None, &mut out);
                out.rows
            };
            let (a, b) = (run(false), run(true));
            assert!(!a.is_empty());
            assert_eq!(a, b, "{kind:?}");
        }
    }
}
