//! Memory per live dedup id, measured by a counting allocator around the
//! real dedup operator, and the time to snapshot and restore that state.
//!   cargo run --release -p tidemark-dataflow --example dedup_memory -- [IDS]
//! Prints `bytes per live id: X` (heap bytes held by the operator after
//! IDS distinct transaction ids, divided by IDS).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use tidemark_dataflow::dedup::Dedup;
use tidemark_dataflow::event::{Currency, Status, Txn, TxnText};
use tidemark_dataflow::stateful::{Emit, Logic};

struct Counting;
static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(5_000_000, |s| s.parse().expect("IDS is a number"));
    let tick_ms = 1000;
    // Every id stays live: the horizon is longer than the stream.
    let mut dedup = Dedup::new(i64::MAX / 4, tick_ms);
    let before = HELD.load(Ordering::Relaxed);
    let per_tick = 50_000u64;
    let mut out = Emit::default();
    let mut id = String::new();
    for (t, start) in (0..n).step_by(per_tick as usize).enumerate() {
        let mut batch: Vec<Txn> = (start..(start + per_tick).min(n))
            .map(|i| {
                id.clear();
                id.push_str(&format!("t-{}-{i}", i % 8));
                let text = TxnText {
                    transaction_id: &id,
                    ..Default::default()
                };
                Txn::new(
                    t as i64 * tick_ms,
                    100,
                    Currency::Usd,
                    Status::Completed,
                    text,
                    0,
                    i,
                )
            })
            .collect();
        dedup.on_tick(t as i64, &mut batch, &mut out);
        out.rows.clear();
    }
    let held = HELD.load(Ordering::Relaxed) - before;
    assert_eq!(dedup.live_ids() as u64, n, "every id is live");
    println!("live ids: {n}");
    println!("heap held by dedup: {:.1} MiB", held as f64 / 1048576.0);
    println!("bytes per live id: {:.1}", held as f64 / n as f64);
    let t0 = Instant::now();
    let snap = dedup.snapshot();
    let bytes: usize = snap.iter().map(|(_, b)| b.len()).sum();
    println!(
        "snapshot: {:.1} MiB in {:.0} ms",
        bytes as f64 / 1048576.0,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    drop(dedup);
    let t0 = Instant::now();
    let mut restored = Dedup::new(i64::MAX / 4, tick_ms);
    restored.restore(&snap);
    assert_eq!(restored.live_ids() as u64, n);
    println!(
        "restore: {} ids in {:.0} ms",
        restored.live_ids(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
}
