use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::json::{push_amount, push_timestamp, REQUIRED};
use super::transactions::Ts;
use super::*;

// ---- a reference model of SPEC 1–4, independent of the generator ----

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// SPEC 2 BAD_TIMESTAMP rules; event time in ms (finer digits truncated).
fn parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let mut digits = b[start..i].to_vec();
        digits.resize(3.max(digits.len()), b'0');
        ms = digits[..3]
            .iter()
            .fold(0i64, |a, &c| a * 10 + (c - b'0') as i64);
    }
    let off = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 60 + om;
            if *c == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || d > dim[mo as usize - 1] {
        return None;
    }
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - off * 60;
    Some(secs * 1000 + ms)
}

/// True when some object has a key twice (on text serde_json accepted).
fn has_duplicate_keys(s: &[u8]) -> bool {
    let mut stack: Vec<Option<HashSet<&[u8]>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'{' => {
                stack.push(Some(HashSet::new()));
                expect_key = true;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Some(_))),
            b'"' => {
                let start = i + 1;
                i += 1;
                while s[i] != b'"' {
                    if s[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if expect_key {
                    if let Some(Some(keys)) = stack.last_mut() {
                        if !keys.insert(&s[start..i]) {
                            return true;
                        }
                    }
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Exact cents of a JSON number literal, if it has at most 2 decimals.
fn literal_cents(lit: &str) -> Option<i128> {
    let (neg, lit) = match lit.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, lit),
    };
    let (mant, exp) = match lit.find(['e', 'E']) {
        Some(at) => (&lit[..at], lit[at + 1..].parse::<i64>().ok()?),
        None => (lit, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let digits: String = format!("{int}{frac}");
    let mut v: i128 = digits.parse().ok()?;
    let mut scale = exp - frac.len() as i64 + 2;
    while scale < 0 {
        if v % 10 != 0 {
            return None;
        }
        v /= 10;
        scale += 1;
    }
    while scale > 0 {
        v = v.checked_mul(10)?;
        scale -= 1;
    }
    Some(if neg { -v } else { v })
}

#[derive(Debug)]
struct Parsed {
    id: String,
    customer: String,
    cents: i64,
    status: String,
    event_ms: i64,
}

/// SPEC 2 classification, LATE aside.
fn classify(raw: &[u8]) -> Result<Parsed, RejectReason> {
    use RejectReason::*;
    if raw.len() > MAX_RECORD_BYTES {
        return Err(TooLarge);
    }
    let text = std::str::from_utf8(raw).map_err(|_| Malformed)?;
    if text.starts_with('\u{feff}') {
        return Err(Malformed);
    }
    let v: Value = serde_json::from_str(text).map_err(|_| Malformed)?;
    if has_duplicate_keys(raw) {
        return Err(Malformed);
    }
    let Value::Object(o) = v else {
        return Err(Malformed);
    };
    for f in REQUIRED {
        let k = std::str::from_utf8(f.key()).unwrap();
        if o.get(k).is_none_or(Value::is_null) {
            return Err(MissingField);
        }
    }
    for k in ["transaction_id", "customer_id"] {
        match o[k].as_str() {
            Some(s) if (1..=128).contains(&s.len()) => {}
            _ => return Err(BadField),
        }
    }
    if !o["merchant"].is_string() || !o["category"].is_string() {
        return Err(BadField);
    }
    match o.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
        _ => return Err(BadField),
    }
    if !o["amount"].is_number() {
        return Err(BadAmount);
    }
    let lit_at = text.find("\"amount\":").unwrap() + 9;
    let lit = text[lit_at..].trim_start();
    let end = lit.find([',', '}']).unwrap();
    let cents = literal_cents(lit[..end].trim()).ok_or(BadAmount)?;
    if cents <= 0 || cents >= 100_000_000 {
        return Err(BadAmount);
    }
    if !matches!(o["currency"].as_str(), Some("USD" | "EUR" | "GBP")) {
        return Err(BadCurrency);
    }
    let status = o["status"].as_str().unwrap_or("");
    if !matches!(status, "COMPLETED" | "PENDING" | "FAILED") {
        return Err(BadStatus);
    }
    let event_ms = o["timestamp"]
        .as_str()
        .and_then(parse_ts)
        .ok_or(BadTimestamp)?;
    Ok(Parsed {
        id: o["transaction_id"].as_str().unwrap().to_owned(),
        customer: o["customer_id"].as_str().unwrap().to_owned(),
        cents: cents as i64,
        status: status.to_owned(),
        event_ms,
    })
}

struct Record {
    raw: Vec<u8>,
    p: u32,
    offset: u64,
    label: Label,
    outcome: Result<Parsed, RejectReason>,
}

/// Generates every partition and runs the reference model of SPEC 2–3 on
/// it; asserts that each record gets the reason its label promises.
fn run_reference(cfg: &GenConfig) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..cfg.partitions {
        let mut max_ts: Option<i64> = None;
        for (offset, (raw, label)) in partition_with_labels(cfg, p).enumerate() {
            let mut outcome = classify(&raw);
            if let Ok(parsed) = &outcome {
                let ev = parsed.event_ms;
                if max_ts.is_some_and(|m| ev < m - MAX_OUT_OF_ORDERNESS_MS) {
                    outcome = Err(RejectReason::Late);
                } else {
                    max_ts = Some(max_ts.map_or(ev, |m| m.max(ev)));
                }
            }
            assert_eq!(
                outcome.as_ref().err().copied(),
                label.reject_reason(),
                "partition {p} offset {offset} label {label:?}: {}",
                String::from_utf8_lossy(&raw[..raw.len().min(400)])
            );
            out.push(Record {
                raw,
                p,
                offset: offset as u64,
                label,
                outcome,
            });
        }
    }
    out
}

/// SPEC 4 over accepted records: indexes of the kept ones, and the
/// number of duplicates. Also checks ConflictDup/Reuse individually.
fn reference_dedup(records: &[Record]) -> (Vec<usize>, u64) {
    let mut acc: Vec<(i64, u32, u64, usize)> = records
        .iter()
        .enumerate()
        .filter_map(|(n, r)| {
            r.outcome
                .as_ref()
                .ok()
                .map(|x| (x.event_ms, r.p, r.offset, n))
        })
        .collect();
    acc.sort();
    let mut anchor: HashMap<&str, i64> = HashMap::new();
    let mut kept = Vec::new();
    let mut dups = 0;
    for &(ev, _, _, n) in &acc {
        let id = records[n].outcome.as_ref().unwrap().id.as_str();
        let is_dup = anchor.get(id).is_some_and(|&a| ev <= a + DEDUP_HORIZON_MS);
        match records[n].label {
            Label::ConflictDup => assert!(is_dup, "ConflictDup {id} kept"),
            Label::Reuse | Label::Anomaly | Label::Burst => {
                assert!(!is_dup, "{:?} {id} is a duplicate", records[n].label)
            }
            _ => {}
        }
        if is_dup {
            dups += 1;
        } else {
            anchor.insert(id, ev);
            kept.push(n);
        }
    }
    (kept, dups)
}

fn count(records: &[Record], f: impl Fn(Label) -> bool) -> u64 {
    records.iter().filter(|r| f(r.label)).count() as u64
}

fn small(events: u64, partitions: u32) -> GenConfig {
    GenConfig {
        events,
        partitions,
        ..GenConfig::default()
    }
}

#[test]
fn a_hot_customer_share_concentrates_customers_and_nothing_else() {
    let base = GenConfig {
        events: 20_000,
        ..Default::default()
    };
    let hot = GenConfig {
        hot_customer_share: 0.6,
        ..base.clone()
    };
    let parse = |cfg: &GenConfig| -> Vec<Option<serde_json::Value>> {
        partition(cfg, 0)
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r).ok())
            .collect()
    };
    let (a, b) = (parse(&base), parse(&hot));
    assert_eq!(a.len(), b.len());
    let customer = |v: &serde_json::Value| v["customer_id"].as_str().map(str::to_owned);
    let mut counts = std::collections::HashMap::new();
    for v in b.iter().flatten() {
        *counts.entry(customer(v)).or_insert(0usize) += 1;
    }
    let top = counts.values().max().copied().unwrap_or(0) as f64;
    let frac = top / b.len() as f64;
    assert!((0.57..0.7).contains(&frac), "{frac}");
    // Records stay records of the same kinds: the same ones parse, and
    // ids and timestamps are untouched.
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.is_some(), y.is_some());
        if let (Some(x), Some(y)) = (x, y) {
            assert_eq!(x["transaction_id"], y["transaction_id"]);
            assert_eq!(x["timestamp"], y["timestamp"]);
        }
    }
}
#[test]
fn determinism_and_independence() {
    let cfg = small(30_000, 3);
    let a: Vec<Vec<u8>> = partition(&cfg, 1).collect();
    let b: Vec<Vec<u8>> = partition(&cfg, 1).collect();
    assert_eq!(a, b);
    assert_eq!(a.len() as u64, partition_len(&cfg, 1));

    // Files: byte-equal across runs, and each file equals its partition
    // generated alone (a partition depends only on (cfg, p)).
    let root = std::env::temp_dir().join(format!("tidemark-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let one = write_files(&cfg, &root.join("a")).unwrap();
    let two = write_files(&cfg, &root.join("b")).unwrap();
    assert_eq!(one.len(), 3);
    let mut sorted = one.clone();
    sorted.sort();
    assert_eq!(sorted, one);
    for (p, (x, y)) in one.iter().zip(&two).enumerate() {
        let x = std::fs::read(x).unwrap();
        assert_eq!(x, std::fs::read(y).unwrap());
        let mut alone = Vec::new();
        for rec in partition(&cfg, p as u32) {
            alone.extend_from_slice(&rec);
            alone.push(b'\n');
        }
        assert_eq!(x, alone, "partition {p}");
    }
    // Re-writing into a directory with stale extra parts fails.
    assert!(write_files(&small(100, 2), &root.join("a")).is_err());
    std::fs::remove_dir_all(&root).unwrap();

    // next_into, the Iterator and the labelled iterator agree.
    let mut gen = partition(&cfg, 2);
    let mut buf = Vec::new();
    let mut via_into = Vec::new();
    while gen.next_into(&mut buf) {
        via_into.push(buf.clone());
    }
    let labelled: Vec<Vec<u8>> = partition_with_labels(&cfg, 2).map(|(b, _)| b).collect();
    assert_eq!(via_into, partition(&cfg, 2).collect::<Vec<_>>());
    assert_eq!(via_into, labelled);

    // Skipping then generating gives the same tail.
    let mut skipped = partition(&cfg, 2);
    assert_eq!(skipped.skip_records(4_321), 4_321);
    let tail: Vec<Vec<u8>> = skipped.collect();
    assert_eq!(tail, via_into[4_321..]);
    let mut all = partition(&cfg, 2);
    assert_eq!(all.skip_records(u64::MAX), via_into.len() as u64);
    assert_eq!(all.next(), None);

    // Another seed gives other data; lengths split as documented.
    let other = GenConfig {
        seed: 7,
        ..cfg.clone()
    };
    assert_ne!(a, partition(&other, 1).collect::<Vec<_>>());
    let c = small(10, 4);
    let lens: Vec<u64> = (0..4).map(|p| partition_len(&c, p)).collect();
    assert_eq!(lens, [3, 3, 2, 2]);
}

#[test]
fn default_mix_matches_labels_and_spec() {
    let cfg = small(200_000, 4);
    let records = run_reference(&cfg);
    let n = records.len() as u64;
    assert_eq!(n, 200_000);

    // Every reject reason, and every fault, appears.
    let reasons: HashSet<RejectReason> = records
        .iter()
        .filter_map(|r| r.label.reject_reason())
        .collect();
    for reason in RejectReason::ALL {
        assert!(reasons.contains(&reason), "no {reason:?}");
    }
    let faults: HashSet<Fault> = records
        .iter()
        .filter_map(|r| match r.label {
            Label::Malformed(f) => Some(f),
            _ => None,
        })
        .collect();
    for f in Fault::all() {
        assert!(faults.contains(&f), "no {f:?}");
    }
    let too_large = count(&records, |l| l == Label::Malformed(Fault::TooLarge));
    assert_eq!(too_large, 4, "one per 50,000-record partition");

    // serde_json parses exactly the records the JSON-level faults spare
    // (it accepts duplicate keys and arrays).
    for r in &records {
        let parses = matches!(
            serde_json::from_slice::<Value>(&r.raw),
            Ok(Value::Object(_))
        );
        let expect = match r.label {
            Label::Malformed(f) => !matches!(
                f,
                Fault::TruncatedJson
                    | Fault::Bom
                    | Fault::NanAmount
                    | Fault::EmptyLine
                    | Fault::Array
                    | Fault::InvalidUtf8
                    | Fault::LoneSurrogate
            ),
            _ => true,
        };
        assert_eq!(parses, expect, "{:?}", r.label);
    }

    // Shares.
    let frac = |f: &dyn Fn(Label) -> bool| count(&records, f) as f64 / n as f64;
    let valid_objects = frac(&|l: Label| l.reject_reason().is_none() || l == Label::Late);
    assert!((0.990..0.999).contains(&valid_objects), "{valid_objects}");
    let kept = frac(&|l: Label| l.is_kept());
    assert!((0.975..0.99).contains(&kept), "kept {kept}");
    let late = frac(&|l| l == Label::Late);
    assert!((0.001..0.003).contains(&late), "late {late}");
    let dup = frac(&|l| l.is_duplicate());
    assert!((0.007..0.012).contains(&dup), "dup {dup}");
    let mal = frac(&|l| matches!(l, Label::Malformed(_)));
    assert!((0.004..0.006).contains(&mal), "malformed {mal}");
    assert!(count(&records, |l| l == Label::ExactDup) > 500);
    assert!(count(&records, |l| l == Label::ConflictDup) > 300);
    assert!(count(&records, |l| l == Label::Anomaly) > 20);

    // Cross-partition exact duplicates exist.
    let mut ids: HashMap<&str, HashSet<u32>> = HashMap::new();
    for r in &records {
        if let Ok(x) = &r.outcome {
            ids.entry(&x.id).or_default().insert(r.p);
        }
    }
    assert!(ids.values().any(|ps| ps.len() > 1));

    // SPEC 4 agrees with the bookkeeping.
    let (kept_idx, dups) = reference_dedup(&records);
    assert_eq!(kept_idx.len() as u64, count(&records, Label::is_kept));
    assert_eq!(dups, count(&records, Label::is_duplicate));

    // Skew: the top 20% customers make 70–90% of kept transactions.
    let mut per_customer: HashMap<&str, u64> = HashMap::new();
    for &k in &kept_idx {
        *per_customer
            .entry(&records[k].outcome.as_ref().unwrap().customer)
            .or_default() += 1;
    }
    let mut counts: Vec<u64> = per_customer.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: u64 = counts.iter().take((cfg.customers / 5) as usize).sum();
    let share = top as f64 / kept_idx.len() as f64;
    eprintln!(
            "valid objects {valid_objects}, kept {kept}, late {late}, dup {dup}, malformed {mal}, top-20% {share}"
        );
    let mut by_label: HashMap<String, u64> = HashMap::new();
    for r in &records {
        *by_label.entry(format!("{:?}", r.label)).or_default() += 1;
    }
    let mut by_label: Vec<_> = by_label.into_iter().collect();
    by_label.sort();
    eprintln!("{by_label:?}");
    assert!((0.7..0.9).contains(&share), "top-20% share {share}");

    // Event time stays within the documented span.
    let min = records
        .iter()
        .filter(|r| r.label != Label::Late)
        .filter_map(|r| r.outcome.as_ref().ok().map(|x| x.event_ms))
        .min()
        .unwrap();
    let max = records
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|x| x.event_ms))
        .max()
        .unwrap();
    assert!(min >= cfg.start_ms - 5_000 - 1_000);
    assert!(max < cfg.start_ms + 40_000);
}

/// Exact z of `x` against history sums, as docs/outputs.md computes it.
fn z_of(n: i128, s: i128, q: i128, x: i128) -> Option<f64> {
    let var = n * q - s * s;
    (var > 0).then(|| (n * x - s) as f64 / (var as f64).sqrt())
}

/// Runs SPEC 7's per-transaction detector (defaults) over the kept
/// records: (anomalies, anomalies that fire, other alerts, others).
fn txn_z_stats(records: &[Record], kept_idx: &[usize]) -> (u32, u32, u32, u32) {
    let mut kept: Vec<(&str, i64, &str, i64, Label)> = kept_idx
        .iter()
        .map(|&k| {
            let x = records[k].outcome.as_ref().unwrap();
            (
                x.customer.as_str(),
                x.event_ms,
                x.id.as_str(),
                x.cents,
                records[k].label,
            )
        })
        .collect();
    kept.sort();
    let mut hist: HashMap<&str, (i128, i128, i128)> = HashMap::new();
    let (mut anomalies, mut fired, mut false_pos, mut normal) = (0, 0, 0, 0);
    for &(c, _, _, cents, label) in &kept {
        let (n, s, q) = hist.entry(c).or_default();
        let z = if *n >= 10 {
            z_of(*n, *s, *q, cents as i128)
        } else {
            None
        };
        let alert = z.is_some_and(|z| z.abs() >= 3.0);
        if label == Label::Anomaly {
            anomalies += 1;
            fired += alert as u32;
        } else {
            normal += 1;
            false_pos += alert as u32;
        }
        *n += 1;
        *s += cents as i128;
        *q += (cents as i128) * (cents as i128);
    }
    (anomalies, fired, false_pos, normal)
}

#[test]
fn long_run_has_reuse_bursts_and_anomalies_that_fire() {
    // 200,000 records at 200/s: 1,000 s of event time.
    let cfg = GenConfig {
        events: 200_000,
        partitions: 2,
        events_per_sec: 200,
        customers: 2_000,
        ..GenConfig::default()
    };
    let records = run_reference(&cfg);
    let (kept_idx, dups) = reference_dedup(&records);
    assert_eq!(kept_idx.len() as u64, count(&records, Label::is_kept));
    assert_eq!(dups, count(&records, Label::is_duplicate));
    assert!(count(&records, |l| l == Label::Reuse) > 10);
    assert!(count(&records, |l| l == Label::Burst) > 100);
    assert_eq!(
        count(&records, |l| l == Label::Malformed(Fault::TooLarge)),
        2
    );

    let (anomalies, fired, false_pos, normal) = txn_z_stats(&records, &kept_idx);
    eprintln!("anomalies {anomalies}, fired {fired}, false alerts {false_pos} of {normal}");
    assert!(anomalies > 20);
    assert_eq!(fired, anomalies, "every Anomaly fires");
    assert!(
        (false_pos as f64) < 0.002 * normal as f64,
        "{false_pos} of {normal}"
    );

    // Window z-score (SPEC 7) of FAILED txn_count on status_1m fires in
    // the burst window (relative window 12).
    let mut failed: HashMap<i64, i128> = HashMap::new();
    for &k in &kept_idx {
        let x = records[k].outcome.as_ref().unwrap();
        if x.status == "FAILED" {
            *failed.entry(x.event_ms.div_euclid(60_000)).or_default() += 1;
        }
    }
    let first = cfg.start_ms.div_euclid(60_000);
    let burst = first + BURST_FIRST_WINDOW;
    let history: Vec<i128> = (first..burst)
        .filter_map(|w| failed.get(&w).copied())
        .collect();
    assert!(history.len() >= 10);
    let (n, s, q) = history
        .iter()
        .fold((0, 0, 0), |(n, s, q), &v| (n + 1, s + v, q + v * v));
    let z = z_of(n, s, q, failed[&burst]).unwrap();
    eprintln!(
        "burst window FAILED count {} vs history {history:?}: z {z}",
        failed[&burst]
    );
    assert!(z >= 3.0, "burst z {z}");
}

#[test]
fn tiny_and_odd_configs() {
    // No panics, right lengths, no TOO_LARGE below 20,000 records.
    for (events, parts) in [(0, 1), (1, 1), (5, 8), (1_000, 3)] {
        let cfg = small(events, parts);
        let total: u64 = (0..parts)
            .map(|p| {
                partition_with_labels(&cfg, p)
                    .inspect(|(raw, label)| {
                        assert!(raw.len() < MAX_RECORD_BYTES);
                        assert_ne!(*label, Label::Malformed(Fault::TooLarge));
                    })
                    .count() as u64
            })
            .sum();
        assert_eq!(total, events);
    }
    let cfg = GenConfig {
        events: 5_000,
        partitions: 1,
        customers: 1,
        merchants: 1,
        events_per_sec: 1,
        max_jitter_ms: 60_000,
        late_fraction: 0.1,
        duplicate_fraction: 0.2,
        malformed_fraction: 0.1,
        anomaly_fraction: 0.05,
        ..GenConfig::default()
    };
    let records = run_reference(&cfg);
    let (kept, dups) = reference_dedup(&records);
    assert_eq!(kept.len() as u64, count(&records, Label::is_kept));
    assert_eq!(dups, count(&records, Label::is_duplicate));
}

#[test]
fn amounts_and_timestamps_are_exact() {
    for (cents, form, text) in [
        (1250, 0, "12.50"),
        (1250, 1, "12.5"),
        (700, 1, "7"),
        (1203, 1, "12.03"),
        (1250, 2, "1250e-2"),
        (1250, 3, "1250E-2"),
        (1250, 4, "12.500"),
        (7, 0, "0.07"),
    ] {
        let mut buf = Vec::new();
        push_amount(&mut buf, cents, form);
        assert_eq!(std::str::from_utf8(&buf).unwrap(), text);
        assert_eq!(literal_cents(text), Some(cents as i128));
    }
    let mut ts = Ts {
        intended: 0,
        event_ms: 0,
        offset: Some(-330),
        digits: 5,
        sub: 7,
        lower_t: false,
        lower_z: false,
    };
    ts.set_time(1_700_000_000_123);
    let mut buf = Vec::new();
    push_timestamp(&mut buf, &ts, None);
    let s = String::from_utf8(buf).unwrap();
    assert_eq!(s, "2023-11-14T16:43:20.12307-05:30");
    assert_eq!(parse_ts(&s), Some(1_700_000_000_123));
    ts.digits = 1;
    ts.offset = None;
    ts.set_time(1_700_000_000_123);
    assert_eq!(ts.event_ms, 1_700_000_000_100);
    let mut buf = Vec::new();
    push_timestamp(&mut buf, &ts, None);
    assert_eq!(std::str::from_utf8(&buf).unwrap(), "2023-11-14T22:13:20.1Z");
    // A leap day and the turn of a year.
    for t in [951_782_400_000i64, 946_684_799_999, 1_709_164_800_000] {
        let days = t.div_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m as i64, d as i64), days);
    }
}

/// The job's own validator (tidemark-dataflow's `parse_record`) gives
/// every record the reason its label promises, and the event time the
/// generator meant.
#[test]
fn job_validator_agrees_with_labels() {
    use tidemark_dataflow::record::parse_record;
    let cfg = small(60_000, 3);
    for p in 0..cfg.partitions {
        let mut gen = partition(&cfg, p);
        let mut buf = Vec::new();
        let mut offset = 0;
        while let Some(label) = gen.next_labeled_into(&mut buf) {
            let got = parse_record(&buf, MAX_RECORD_BYTES, p, offset);
            let expect = label.reject_reason().filter(|r| *r != RejectReason::Late);
            assert_eq!(
                got.as_ref().err().copied(),
                expect,
                "partition {p} offset {offset} {label:?}: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(400)])
            );
            if let Ok(txn) = got {
                assert_eq!(Some(txn.event_time), gen.last_event_ms());
            }
            offset += 1;
        }
    }
}
