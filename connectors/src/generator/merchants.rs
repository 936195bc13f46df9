//! Merchant names, and the merchants reference table (SPEC 9) that goes with a generated
//! dataset: one partition of JSON Lines rows, deterministic in the
//! transactions' [`GenConfig`].
//!
//! # Shape
//!
//! * **Initial versions**: one row per merchant rank at `start_ms - 1 h`,
//!   except ranks `≡ 7 (mod 10)`, which never get a row (their
//!   transactions stay unenriched).
//! * **Updates during the run**: event time is cut into 20 s slots from
//!   `start_ms` to the end of the transactions. Each slot updates one of
//!   the three hottest ranks (in turn) and two other ranks; every fourth
//!   slot updates rank 0 once more, so the hottest merchant sometimes
//!   changes twice within a minute. Rows of a slot are 6 s apart and
//!   jittered up to 5 s backwards: out of order, never late.
//! * **Late rows** (every tenth slot from the eighth): a row 75 s behind,
//!   a `LATE` reject of the reference source.
//! * **Bad rows** (every tenth slot from the fourth): one with
//!   `"risk_tier":"CRITICAL"` (`BAD_FIELD`) and one object cut short
//!   (`MALFORMED`).
//!
//! Updates stop after [`MAX_UPDATE_SPAN_MS`] of event time, so an endless
//! (`--follow`) run reads a bounded table instead of racing ahead of the
//! transactions forever.

use std::io::Write as _;
use std::path::Path;

use super::{civil_from_days, mix64, seed_key, GenConfig, CATEGORIES};

/// Merchant name stems (each merchant is `<stem> #NNNN`).
pub const MERCHANT_NAMES: [&str; 16] = [
    "Acme Stores",
    "Globex",
    "Initech",
    "Umbrella Pharmacy",
    "Café Lumière",
    "Bäckerei Müller",
    "東京ラーメン",
    "Joe's \"Diner\"",
    "Northwind Traders",
    "Blue Bottle",
    "Stark Fuel",
    "Wayne Electronics",
    "Soylent Market",
    "Hooli Cloud",
    "Pied Piper",
    "Vandelay Imports",
];

/// The merchant of each rank (rank 0 the most frequent), as the
/// transactions spell it.
pub fn merchant_names(cfg: &GenConfig) -> Vec<String> {
    let seed_key = seed_key(cfg);
    let n_merchants = cfg.merchants.max(1);
    let mwidth = (n_merchants - 1).to_string().len().max(4);
    (0..n_merchants)
        .map(|m| {
            let base = MERCHANT_NAMES[(mix64(seed_key ^ 2 ^ (m << 8)) % 16) as usize];
            format!("{base} #{m:0mwidth$}")
        })
        .collect()
}

/// Which kinds of rows beyond the initial versions to write.
#[derive(Clone, Debug)]
pub struct MerchantsConfig {
    pub updates: bool,
    pub late_rows: bool,
    pub bad_rows: bool,
}

impl Default for MerchantsConfig {
    fn default() -> Self {
        MerchantsConfig {
            updates: true,
            late_rows: true,
            bad_rows: true,
        }
    }
}

const SLOT_MS: i64 = 20_000;
const INITIAL_BEFORE_MS: i64 = 3_600_000;
/// Updates cover at most a day of event time.
pub const MAX_UPDATE_SPAN_MS: i64 = 86_400_000;

const TIERS: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];
const COUNTRIES: [&str; 10] = ["US", "GB", "DE", "FR", "NL", "IE", "ES", "IT", "CA", "JP"];

/// The merchants table's rows, in order, generated lazily.
pub struct MerchantRows {
    names: Vec<String>,
    seed_key: u64,
    start_ms: i64,
    cfg: MerchantsConfig,
    /// Next initial rank to consider, then `names.len()` once done.
    next_rank: u64,
    next_slot: i64,
    slots: i64,
    pending: std::collections::VecDeque<Vec<u8>>,
}

/// The rows of the table for `cfg`'s transactions.
pub fn merchant_rows(cfg: &GenConfig, mc: &MerchantsConfig) -> MerchantRows {
    let eps = cfg.events_per_sec.max(1) as u128;
    let span = (cfg.events as u128 * 1000 / eps).min(MAX_UPDATE_SPAN_MS as u128) as i64;
    MerchantRows {
        names: merchant_names(cfg),
        seed_key: seed_key(cfg),
        start_ms: cfg.start_ms,
        cfg: mc.clone(),
        next_rank: 0,
        next_slot: 0,
        slots: if mc.updates || mc.late_rows || mc.bad_rows {
            (span + SLOT_MS - 1) / SLOT_MS
        } else {
            0
        },
        pending: Default::default(),
    }
}

/// Writes the whole table to `path` as JSON Lines.
pub fn write_merchants_file(
    cfg: &GenConfig,
    mc: &MerchantsConfig,
    path: &Path,
) -> anyhow::Result<u64> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut n = 0;
    for row in merchant_rows(cfg, mc) {
        out.write_all(&row)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

impl MerchantRows {
    fn h(&self, a: u64, b: u64) -> u64 {
        mix64(self.seed_key ^ 0x6d65_7263 ^ mix64(a.wrapping_mul(0x1_0000_0001) ^ b))
    }

    fn has_row(rank: u64) -> bool {
        rank % 10 != 7
    }

    /// A version of `rank`'s attributes; `version` picks which.
    fn row(&self, rank: u64, version: u64, valid_from: i64) -> Vec<u8> {
        let h = self.h(rank, version);
        let tier = match h % 10 {
            0..=5 => TIERS[0],
            6..=8 => TIERS[1],
            _ => TIERS[2],
        };
        let category = CATEGORIES[((h >> 8) % CATEGORIES.len() as u64) as usize];
        let country = COUNTRIES[((h >> 16) % COUNTRIES.len() as u64) as usize];
        self.format(rank, valid_from, category, tier, country)
    }

    fn format(&self, rank: u64, at: i64, category: &str, tier: &str, country: &str) -> Vec<u8> {
        let mut s = Vec::with_capacity(128);
        s.extend_from_slice(b"{\"merchant\":");
        s.extend_from_slice(&serde_json::to_vec(&self.names[rank as usize]).expect("string"));
        write!(
            s,
            ",\"valid_from\":\"{}\",\"merchant_category\":\"{category}\",\"risk_tier\":\"{tier}\",\"country\":\"{country}\"}}",
            rfc3339(at)
        )
        .expect("writing to a Vec");
        s
    }

    /// A rank other than the three hottest that has rows.
    fn other_rank(&self, slot: i64, i: u64) -> u64 {
        let n = self.names.len() as u64;
        if n <= 3 {
            return 0;
        }
        let mut r = 3 + self.h(slot as u64, 100 + i) % (n - 3);
        while !Self::has_row(r) {
            r = 3 + (r - 3 + 1) % (n - 3);
        }
        r
    }

    fn fill_slot(&mut self, slot: i64) {
        let t = self.start_ms + slot * SLOT_MS;
        let n = self.names.len() as u64;
        let hot = (slot as u64 % 3).min(n - 1);
        let mut ranks = vec![hot, self.other_rank(slot, 0), self.other_rank(slot, 1)];
        if slot % 4 == 0 {
            ranks.push(0);
        }
        if self.cfg.updates {
            for (i, &rank) in ranks.iter().enumerate() {
                let jitter = (self.h(slot as u64, i as u64) % 5_001) as i64;
                let at = t + 1_000 + i as i64 * 6_000 - jitter;
                let version = (slot as u64 + 1) * 8 + i as u64;
                let row = self.row(rank, version, at);
                self.pending.push_back(row);
            }
        }
        if self.cfg.late_rows && slot % 10 == 7 {
            let rank = ranks[1];
            let row = self.row(rank, u64::MAX - slot as u64, t - 75_000);
            self.pending.push_back(row);
        }
        if self.cfg.bad_rows && slot % 10 == 3 {
            let rank = ranks[2];
            let at = t + 2_000;
            let country = COUNTRIES[(slot as usize / 10) % COUNTRIES.len()];
            let critical = self.format(rank, at, CATEGORIES[0], "CRITICAL", country);
            self.pending.push_back(critical);
            let mut cut = self.row(rank, 7, at);
            cut.truncate(cut.len() / 2);
            self.pending.push_back(cut);
        }
    }
}

impl Iterator for MerchantRows {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let n = self.names.len() as u64;
        while self.next_rank < n {
            let rank = self.next_rank;
            self.next_rank += 1;
            if Self::has_row(rank) {
                return Some(self.row(rank, 0, self.start_ms - INITIAL_BEFORE_MS));
            }
        }
        while self.pending.is_empty() && self.next_slot < self.slots {
            let slot = self.next_slot;
            self.next_slot += 1;
            self.fill_slot(slot);
        }
        self.pending.pop_front()
    }
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflow::event::RejectReason;
    use tidemark_dataflow::record::parse_merchant_row;
    use tidemark_dataflow::rfc3339::parse_rfc3339_ms;

    fn cfg() -> GenConfig {
        GenConfig {
            events: 100_000,
            events_per_sec: 250,
            ..Default::default()
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [
            0,
            1_700_000_000_123,
            -1,
            951_782_400_000, /* 2000-02-29 */
        ] {
            assert_eq!(parse_rfc3339_ms(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
    }

    #[test]
    fn the_table_has_every_kind_of_row_the_tests_need() {
        let cfg = cfg();
        let names = merchant_names(&cfg);
        let rows: Vec<Vec<u8>> = merchant_rows(&cfg, &MerchantsConfig::default()).collect();
        let mut per_rank: std::collections::HashMap<String, Vec<i64>> = Default::default();
        let (mut late, mut bad_field, mut malformed, mut max) = (0, 0, 0, i64::MIN);
        for row in &rows {
            match parse_merchant_row(row, 1 << 20) {
                Ok(r) => {
                    if r.valid_from < max.saturating_sub(10_000) {
                        late += 1;
                    } else {
                        per_rank.entry(r.merchant).or_default().push(r.valid_from);
                    }
                    max = max.max(r.valid_from);
                }
                Err(RejectReason::BadField) => bad_field += 1,
                Err(RejectReason::Malformed) => malformed += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        // Every merchant string is one the transactions use.
        assert!(per_rank.keys().all(|m| names.contains(m)));
        // Ranks 7, 17, ... have no row; every other rank has one.
        for (rank, name) in names.iter().enumerate() {
            assert_eq!(per_rank.contains_key(name), rank % 10 != 7, "rank {rank}");
        }
        // 400 s of event time: 20 slots, 2 late rows, 2 bad rows of each kind.
        assert_eq!((late, bad_field, malformed), (2, 2, 2));
        // The hottest merchant changes twice within some minute.
        let hot = &per_rank[&names[0]];
        assert!(hot.len() > 8, "{hot:?}");
        let twice = hot
            .iter()
            .filter(|&&t| t >= cfg.start_ms)
            .map(|t| t.div_euclid(60_000))
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == w[1]);
        assert!(twice, "{hot:?}");
        // Updates are out of order but never late.
        let valid_from: Vec<i64> = rows
            .iter()
            .filter_map(|r| parse_merchant_row(r, 1 << 20).ok())
            .map(|r| r.valid_from)
            .collect();
        assert!(valid_from.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn rows_are_deterministic_and_endless_runs_stay_bounded() {
        let cfg = cfg();
        let a: Vec<_> = merchant_rows(&cfg, &MerchantsConfig::default()).collect();
        let b: Vec<_> = merchant_rows(&cfg, &MerchantsConfig::default()).collect();
        assert_eq!(a, b);
        let only_initial = MerchantsConfig {
            updates: false,
            late_rows: false,
            bad_rows: false,
        };
        assert_eq!(merchant_rows(&cfg, &only_initial).count(), 450);
        let endless = GenConfig {
            events: u64::MAX / 2,
            ..cfg
        };
        let n = merchant_rows(&endless, &MerchantsConfig::default()).count();
        let slots = (MAX_UPDATE_SPAN_MS / SLOT_MS) as usize;
        assert!(n > 450 + 3 * slots && n < 450 + 5 * slots, "{n}");
    }

    #[test]
    fn a_hot_share_of_zero_changes_nothing_and_otherwise_concentrates_traffic() {
        let base = GenConfig {
            events: 20_000,
            ..Default::default()
        };
        let hot = GenConfig {
            hot_merchant_share: 0.6,
            ..base.clone()
        };
        let names = merchant_names(&base);
        let first = serde_json::to_string(&names[0]).unwrap();
        let share = |cfg: &GenConfig| {
            let recs: Vec<Vec<u8>> = crate::generator::partition(cfg, 0).collect();
            let n = recs
                .iter()
                .filter(|r| String::from_utf8_lossy(r).contains(&first))
                .count();
            (recs, n as f64)
        };
        let (a, na) = share(&base);
        let (b, nb) = share(&hot);
        assert_eq!(a.len(), b.len());
        assert!(na / (a.len() as f64) < 0.2, "{na}");
        let frac = nb / b.len() as f64;
        assert!((0.6..0.72).contains(&frac), "{frac}");
        // The share moves merchants (and the category that goes with each
        // merchant) and nothing else: every other field of every record that
        // is JSON is as without it, and the same records are JSON.
        let strip = |r: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(r)
                .ok()
                .map(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("merchant");
                        o.remove("category");
                    }
                    v
                })
        };
        let mut moved = 0;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(strip(x), strip(y));
            moved += usize::from(x != y);
        }
        assert!(moved as f64 > 0.5 * a.len() as f64, "{moved}");
    }
}
