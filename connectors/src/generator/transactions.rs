//! The event stream: the content of each new transaction (customer,
//! amount, currency, merchant, status, timestamp form, metadata), a pure
//! function of `(cfg, partition, index)`, and the context computed once
//! per dataset.

use super::merchants::merchant_names;
use super::*;

pub(super) const COMPLETED: u8 = 0;
pub(super) const PENDING: u8 = 1;
pub(super) const FAILED: u8 = 2;
pub(super) const STATUS: [&[u8]; 3] = [b"COMPLETED", b"PENDING", b"FAILED"];
pub(super) const STATUS_LOWER: [&[u8]; 3] = [b"completed", b"pending", b"failed"];
pub(super) const CURRENCY: [&[u8]; 3] = [b"USD", b"EUR", b"GBP"];
pub(super) const CURRENCY_LOWER: [&[u8]; 3] = [b"usd", b"eur", b"gbp"];

pub(crate) const CATEGORIES: [&str; 10] = [
    "grocery",
    "electronics",
    "travel",
    "restaurants",
    "fuel",
    "entertainment",
    "health",
    "clothing",
    "home",
    "digital_goods",
];

pub(super) const DEVICES: [&str; 5] = ["ios", "android", "web", "pos", "kiosk"];
/// Raw JSON string literals (with quotes), some escaped.
pub(super) const LOCATIONS: [&[u8]; 10] = [
    b"\"Berlin\"",
    b"\"London\"",
    b"\"New York\"",
    "\"São Paulo\"".as_bytes(),
    b"\"Z\\u00fcrich\"",
    "\"Zürich\"".as_bytes(),
    b"\"Paris\"",
    b"\"Tokyo\"",
    b"\"Mumbai\"",
    b"\"Lagos\"",
];
/// UTC offsets in minutes; `None` is `Z`. Uniform pick: `Z` ~45%.
pub(super) const OFFSETS: [Option<i16>; 20] = [
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    Some(0),
    Some(60),
    Some(120),
    Some(120),
    Some(-300),
    Some(-330),
    Some(330),
    Some(345),
    Some(-480),
    Some(540),
    Some(60),
];
pub(super) const FRACTION_DIGITS: [u8; 20] =
    [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6];

#[derive(Clone, Copy, Debug)]
pub(super) struct Ts {
    /// Event time before truncation to the written precision.
    pub(super) intended: i64,
    /// Event time as the job reads it.
    pub(super) event_ms: i64,
    pub(super) offset: Option<i16>,
    pub(super) digits: u8,
    /// Sub-millisecond digits, `< 10^(digits-3)`.
    pub(super) sub: u32,
    pub(super) lower_t: bool,
    pub(super) lower_z: bool,
}

impl Ts {
    pub(super) fn set_time(&mut self, t: i64) {
        self.intended = t;
        self.event_ms = if self.digits >= 3 {
            t
        } else {
            let unit = 10i64.pow(3 - self.digits as u32);
            t - t.rem_euclid(unit)
        };
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Txn {
    pub(super) id_p: u32,
    pub(super) id_k: u64,
    /// Customer rank: `< hot` is a hot customer.
    pub(super) customer: u64,
    pub(super) cents: i64,
    pub(super) amount_form: u8,
    pub(super) currency: u8,
    pub(super) merchant: u32,
    pub(super) status: u8,
    pub(super) ts: Ts,
    /// 0 absent, 1 null, 2 `{}`, 3 device + location.
    pub(super) meta: u8,
    pub(super) device: u8,
    pub(super) location: u8,
    pub(super) meta_swap: bool,
    pub(super) meta_app: bool,
    pub(super) alt_order: bool,
    pub(super) spaced: bool,
    /// 0 none, 1 `channel`, 2 `risk_score`.
    pub(super) extra: u8,
}

pub(super) struct Ctx {
    pub(super) seed_key: u64,
    pub(super) events: u64,
    pub(super) parts: u64,
    pub(super) eps: u64,
    pub(super) start_ms: i64,
    pub(super) jitter: i64,
    pub(super) customers: u64,
    pub(super) hot: u64,
    /// Usual amount of each customer rank, in cents (empty when huge).
    pub(super) usual: Vec<f64>,
    pub(super) cust_mul: u64,
    pub(super) cust_add: u64,
    pub(super) cust_width: usize,
    /// JSON string literals of the merchants, with quotes.
    pub(super) merchants: Vec<Vec<u8>>,
    pub(super) merchant_category: Vec<u8>,
    pub(super) ln_merchants: f64,
    pub(super) hot_merchant_share: f64,
    pub(super) hot_customer_share: f64,
    pub(super) categories: Vec<Vec<u8>>,
    pub(super) th_late: f64,
    pub(super) th_malformed: f64,
    pub(super) th_exact: f64,
    pub(super) th_conflict: f64,
    pub(super) th_reuse: f64,
    pub(super) th_anomaly: f64,
    pub(super) bursts: bool,
    pub(super) first_window: i64,
    pub(super) anomaly_min_g: u64,
    pub(super) exact_back_g: u64,
    pub(super) reuse_back_i: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ctx {
    pub(super) fn new(cfg: &GenConfig) -> Ctx {
        let seed_key = seed_key(cfg);
        let customers = cfg.customers.max(1);
        let hot = customers.div_ceil(5);
        // A fixed permutation rank -> id: x * a + b mod n, gcd(a, n) = 1.
        let mut cust_mul = ((customers as f64 * 0.618_033_988_7) as u64).max(1);
        while gcd(cust_mul, customers) != 1 {
            cust_mul += 1;
        }
        let cust_add = mix64(seed_key ^ 1) % customers;
        let cust_width = (customers - 1).to_string().len().max(6);
        let n_merchants = cfg.merchants.max(1);
        let merchants = merchant_names(cfg)
            .iter()
            .map(|name| serde_json::to_vec(name).expect("string serializes"))
            .collect();
        let merchant_category = (0..n_merchants)
            .map(|m| (mix64(seed_key ^ 3 ^ (m << 8)) % CATEGORIES.len() as u64) as u8)
            .collect();
        let categories = CATEGORIES
            .iter()
            .map(|c| serde_json::to_vec(c).expect("string serializes"))
            .collect();
        let clamp = |x: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        let th_late = clamp(cfg.late_fraction);
        let th_malformed = clamp(th_late + clamp(cfg.malformed_fraction));
        let dup = clamp(cfg.duplicate_fraction);
        let th_exact = clamp(th_malformed + 0.6 * dup);
        let th_conflict = clamp(th_malformed + dup);
        let th_reuse = clamp(th_conflict + dup / 20.0);
        let th_anomaly = clamp(th_reuse + clamp(cfg.anomaly_fraction));
        let eps = cfg.events_per_sec.max(1);
        let parts = cfg.partitions.max(1) as u64;
        let mut ctx = Ctx {
            seed_key,
            events: cfg.events,
            parts,
            eps,
            start_ms: cfg.start_ms,
            jitter: cfg.max_jitter_ms.clamp(0, MAX_EFFECTIVE_JITTER_MS),
            customers,
            hot,
            usual: Vec::new(),
            cust_mul,
            cust_add,
            cust_width,
            merchants,
            merchant_category,
            ln_merchants: ((n_merchants + 1) as f64).ln(),
            hot_merchant_share: clamp(cfg.hot_merchant_share),
            hot_customer_share: clamp(cfg.hot_customer_share),
            categories,
            th_late,
            th_malformed,
            th_exact,
            th_conflict,
            th_reuse,
            th_anomaly,
            bursts: cfg.anomaly_fraction > 0.0,
            first_window: cfg.start_ms.div_euclid(60_000),
            anomaly_min_g: 38 * hot,
            exact_back_g: (EXACT_DUP_BACK_MS * eps / 1000).max(1),
            reuse_back_i: (REUSE_BACK_MS * eps).div_ceil(1000 * parts) + 1,
        };
        if customers <= 1 << 22 {
            ctx.usual = (0..customers).map(|c| ctx.compute_usual_cents(c)).collect();
        }
        ctx
    }

    pub(super) fn len_of(&self, q: u32) -> u64 {
        self.events / self.parts + u64::from((q as u64) < self.events % self.parts)
    }

    pub(super) fn global(&self, q: u32, k: u64) -> u64 {
        k * self.parts + q as u64
    }

    pub(super) fn base_ms(&self, g: u64) -> i64 {
        let off = match g.checked_mul(1000) {
            Some(x) => x / self.eps,
            None => (g as u128 * 1000 / self.eps as u128) as u64,
        };
        self.start_ms + off as i64
    }

    pub(super) fn usual_cents(&self, customer: u64) -> f64 {
        match self.usual.get(customer as usize) {
            Some(&c) => c,
            None => self.compute_usual_cents(customer),
        }
    }

    pub(super) fn compute_usual_cents(&self, customer: u64) -> f64 {
        let u = unit(mix64(self.seed_key ^ 0xC0FF_EE00 ^ mix64(customer)));
        // log-uniform 5.00 .. 800.00
        (500f64.ln() + u * (80_000f64.ln() - 500f64.ln())).exp()
    }

    /// The content of record `(q, k)` as a plain valid new transaction.
    /// Draws from `r` in a fixed order (customer, amount, currency,
    /// merchant, status, timestamp, metadata): the bytes of a seed depend
    /// on it.
    pub(super) fn gen_txn(&self, q: u32, k: u64, base: i64, r: &mut Rng) -> Txn {
        let customer = self.pick_customer(q, k, r);
        let cents = self.pick_cents(customer, r);
        let amount_form = match r.below(20) {
            0..=12 => 0,  // 12.50
            13..=16 => 1, // 12.5
            17 => 2,      // 1250e-2
            18 => 3,      // 1250E-2
            _ => 4,       // 12.500
        };
        let currency = match r.below(20) {
            0..=11 => 0,
            12..=16 => 1,
            _ => 2,
        };
        let merchant = self.pick_merchant(q, k, r);
        let status = match r.below(20) {
            0..=16 => COMPLETED,
            17..=18 => PENDING,
            _ => FAILED,
        };
        let ts = self.pick_ts(base, r);
        let meta = match r.below(100) {
            0..=47 => 0,
            48 => 1,
            49 => 2,
            _ => 3,
        };
        let bits = r.u64();
        Txn {
            id_p: q,
            id_k: k,
            customer,
            cents,
            amount_form,
            currency,
            merchant,
            status,
            ts,
            meta,
            device: (bits % DEVICES.len() as u64) as u8,
            location: ((bits >> 8) % LOCATIONS.len() as u64) as u8,
            meta_swap: (bits >> 16).is_multiple_of(7),
            meta_app: (bits >> 24).is_multiple_of(20),
            alt_order: (bits >> 32).is_multiple_of(10),
            spaced: (bits >> 40).is_multiple_of(8),
            extra: match (bits >> 48) % 30 {
                0 => 1,
                1 => 2,
                _ => 0,
            },
        }
    }

    /// A customer rank: 80% among the hot fifth; the hot customer share
    /// (drawn from a hash of the record, not from `r`) overrides it.
    fn pick_customer(&self, q: u32, k: u64, r: &mut Rng) -> u64 {
        let customer = if r.f64() < 0.8 {
            r.below(self.hot)
        } else if self.customers > self.hot {
            self.hot + r.below(self.customers - self.hot)
        } else {
            r.below(self.customers)
        };
        // Not from `r`, like the hot merchant.
        if self.hot_customer_share > 0.0
            && unit(mix64(
                self.seed_key ^ 0x4355_5354 ^ mix64(self.global(q, k)),
            )) < self.hot_customer_share
        {
            0
        } else {
            customer
        }
    }

    /// 0.75–1.25 × the customer's usual amount, 15% rounded to whole units.
    fn pick_cents(&self, customer: u64, r: &mut Rng) -> i64 {
        let mut cents = (self.usual_cents(customer) * (0.75 + 0.5 * r.f64())).round() as i64;
        if r.below(100) < 15 {
            cents = ((cents + 50) / 100).max(1) * 100;
        }
        cents
    }

    /// A Zipf-like merchant rank; the hot merchant share (drawn from a hash
    /// of the record) sends it to rank 0.
    fn pick_merchant(&self, q: u32, k: u64, r: &mut Rng) -> u32 {
        let x = (r.f64() * self.ln_merchants).exp() as u64;
        let usual = (x.saturating_sub(1)).min(self.merchants.len() as u64 - 1) as u32;
        // Not from `r`: a share of 0 must leave the record stream as it is.
        let hot = self.hot_merchant_share > 0.0
            && unit(mix64(
                self.seed_key ^ 0x484f_5421 ^ mix64(self.global(q, k)),
            )) < self.hot_merchant_share;
        if hot {
            0
        } else {
            usual
        }
    }

    /// The timestamp: `base` minus jitter, in one of the written forms.
    fn pick_ts(&self, base: i64, r: &mut Rng) -> Ts {
        let ju = r.f64();
        let jitter = (self.jitter as f64 * ju * ju) as i64;
        let digits = FRACTION_DIGITS[r.below(20) as usize];
        let sub = if digits > 3 {
            r.below(10u64.pow(digits as u32 - 3)) as u32
        } else {
            0
        };
        let mut ts = Ts {
            intended: 0,
            event_ms: 0,
            offset: OFFSETS[r.below(20) as usize],
            digits,
            sub,
            lower_t: r.below(100) == 0,
            lower_z: r.below(100) == 0,
        };
        ts.set_time(base - jitter);
        ts
    }
}
