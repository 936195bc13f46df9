//! The event model: what flows between operators.
//!
//! Records are kept compact because millions of them cross the exchange each
//! second: every string field of a transaction lives in one `String` (one
//! allocation per record), addressed by byte offsets.

use serde::{Deserialize, Serialize};

/// Timely timestamp: event time coarsened to a tick (`floor(ms / tick_ms)`).
/// Signed so that event times before 1970 order correctly.
pub type Tick = i64;

/// Event time in Unix milliseconds, UTC.
pub type Millis = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Currency {
    Usd,
    Eur,
    Gbp,
}

impl Currency {
    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "USD" => Some(Currency::Usd),
            "EUR" => Some(Currency::Eur),
            "GBP" => Some(Currency::Gbp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Completed,
    Pending,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "COMPLETED",
            Status::Pending => "PENDING",
            Status::Failed => "FAILED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "COMPLETED" => Some(Status::Completed),
            "PENDING" => Some(Status::Pending),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// A merchant's risk tier (SPEC 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RiskTier {
    Low,
    Medium,
    High,
}

impl RiskTier {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskTier::Low => "LOW",
            RiskTier::Medium => "MEDIUM",
            RiskTier::High => "HIGH",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LOW" => Some(RiskTier::Low),
            "MEDIUM" => Some(RiskTier::Medium),
            "HIGH" => Some(RiskTier::High),
            _ => None,
        }
    }
}

/// One version of a merchant in the reference table (SPEC 9), valid from
/// its event time `valid_from` until the merchant's next version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MerchantRow {
    pub merchant: String,
    pub valid_from: Millis,
    pub merchant_category: String,
    pub risk_tier: RiskTier,
    pub country: String,
}

/// Why a record went to `rejects`, in SPEC precedence order (first wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RejectReason {
    TooLarge,
    Malformed,
    MissingField,
    BadField,
    BadAmount,
    BadCurrency,
    BadStatus,
    BadTimestamp,
    Late,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::TooLarge,
        RejectReason::Malformed,
        RejectReason::MissingField,
        RejectReason::BadField,
        RejectReason::BadAmount,
        RejectReason::BadCurrency,
        RejectReason::BadStatus,
        RejectReason::BadTimestamp,
        RejectReason::Late,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "TOO_LARGE",
            RejectReason::Malformed => "MALFORMED",
            RejectReason::MissingField => "MISSING_FIELD",
            RejectReason::BadField => "BAD_FIELD",
            RejectReason::BadAmount => "BAD_AMOUNT",
            RejectReason::BadCurrency => "BAD_CURRENCY",
            RejectReason::BadStatus => "BAD_STATUS",
            RejectReason::BadTimestamp => "BAD_TIMESTAMP",
            RejectReason::Late => "LATE",
        }
    }
}

/// Indexes of the string fields packed into [`Txn::text`].
const TXN_ID: usize = 0;
const CUSTOMER: usize = 1;
const MERCHANT: usize = 2;
const CATEGORY: usize = 3;
const TIMESTAMP: usize = 4;
const METADATA: usize = 5;
/// Enrichment (SPEC 9), empty until [`Txn::enrich`] finds a row.
const MERCHANT_CATEGORY: usize = 6;
const MERCHANT_COUNTRY: usize = 7;
const N_TEXT_FIELDS: usize = 8;

/// A valid transaction record, as read from one source partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub event_time: Millis,
    pub amount_cents: i64,
    pub partition: u32,
    pub offset: u64,
    pub currency: Currency,
    pub status: Status,
    /// The matched reference row's risk tier; `None` when no row matched
    /// (then the enriched text fields are empty too).
    pub risk_tier: Option<RiskTier>,
    /// transaction_id, customer_id, merchant, category, the raw `timestamp`
    /// string, the canonical metadata JSON (empty when absent), then the
    /// enriched merchant_category and merchant_country, back to back.
    text: String,
    ends: [u32; N_TEXT_FIELDS],
}

/// The string fields of a transaction, borrowed, for building a [`Txn`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TxnText<'a> {
    pub transaction_id: &'a str,
    pub customer_id: &'a str,
    pub merchant: &'a str,
    pub category: &'a str,
    pub timestamp: &'a str,
    /// Canonical metadata JSON (keys sorted, serde_json escaping), or "" when absent.
    pub metadata: &'a str,
}

impl Txn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        event_time: Millis,
        amount_cents: i64,
        currency: Currency,
        status: Status,
        text: TxnText<'_>,
        partition: u32,
        offset: u64,
    ) -> Txn {
        let parts = [
            text.transaction_id,
            text.customer_id,
            text.merchant,
            text.category,
            text.timestamp,
            text.metadata,
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Room for a typical enrichment, so it does not reallocate.
        let mut buf = String::with_capacity(len + 24);
        let mut ends = [0u32; N_TEXT_FIELDS];
        for (i, p) in parts.iter().enumerate() {
            buf.push_str(p);
            ends[i] = buf.len() as u32;
        }
        ends[MERCHANT_CATEGORY] = buf.len() as u32;
        ends[MERCHANT_COUNTRY] = buf.len() as u32;
        Txn {
            event_time,
            amount_cents,
            partition,
            offset,
            currency,
            status,
            risk_tier: None,
            text: buf,
            ends,
        }
    }

    /// Takes the matched reference row's fields (SPEC 9).
    pub fn enrich(&mut self, merchant_category: &str, risk_tier: RiskTier, country: &str) {
        self.text.truncate(self.ends[METADATA] as usize);
        self.text.push_str(merchant_category);
        self.ends[MERCHANT_CATEGORY] = self.text.len() as u32;
        self.text.push_str(country);
        self.ends[MERCHANT_COUNTRY] = self.text.len() as u32;
        self.risk_tier = Some(risk_tier);
    }

    #[inline]
    fn field(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
    pub fn transaction_id(&self) -> &str {
        self.field(TXN_ID)
    }
    pub fn customer_id(&self) -> &str {
        self.field(CUSTOMER)
    }
    pub fn merchant(&self) -> &str {
        self.field(MERCHANT)
    }
    pub fn category(&self) -> &str {
        self.field(CATEGORY)
    }
    /// The `timestamp` field exactly as it was given.
    pub fn timestamp_raw(&self) -> &str {
        self.field(TIMESTAMP)
    }
    /// Canonical metadata JSON, `None` when the record had none.
    pub fn metadata(&self) -> Option<&str> {
        Some(self.field(METADATA)).filter(|m| !m.is_empty())
    }
    /// The enriched `merchant_category`, `None` when no reference row matched.
    pub fn merchant_category(&self) -> Option<&str> {
        self.risk_tier.map(|_| self.field(MERCHANT_CATEGORY))
    }
    /// The enriched `merchant_country`, `None` when no reference row matched.
    pub fn merchant_country(&self) -> Option<&str> {
        self.risk_tier.map(|_| self.field(MERCHANT_COUNTRY))
    }
    /// The value of a group-by field; `None` for an enriched field of a
    /// transaction no reference row matched.
    pub fn group_field(&self, name: GroupField) -> Option<&str> {
        Some(match name {
            GroupField::Status => self.status.as_str(),
            GroupField::Currency => self.currency.as_str(),
            GroupField::CustomerId => self.customer_id(),
            GroupField::Merchant => self.merchant(),
            GroupField::Category => self.category(),
            GroupField::MerchantCategory => return self.merchant_category(),
            GroupField::RiskTier => self.risk_tier?.as_str(),
            GroupField::MerchantCountry => return self.merchant_country(),
        })
    }
}

/// Fields a window spec may group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupField {
    Status,
    Currency,
    CustomerId,
    Merchant,
    Category,
    /// Enriched from the merchants reference table (SPEC 9).
    MerchantCategory,
    RiskTier,
    MerchantCountry,
}

impl GroupField {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "status" => GroupField::Status,
            "currency" => GroupField::Currency,
            "customer_id" => GroupField::CustomerId,
            "merchant" => GroupField::Merchant,
            "category" => GroupField::Category,
            "merchant_category" => GroupField::MerchantCategory,
            "risk_tier" => GroupField::RiskTier,
            "merchant_country" => GroupField::MerchantCountry,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            GroupField::Status => "status",
            GroupField::Currency => "currency",
            GroupField::CustomerId => "customer_id",
            GroupField::Merchant => "merchant",
            GroupField::Category => "category",
            GroupField::MerchantCategory => "merchant_category",
            GroupField::RiskTier => "risk_tier",
            GroupField::MerchantCountry => "merchant_country",
        }
    }

    /// Whether the value comes from the reference table (and may be null).
    pub fn is_enriched(self) -> bool {
        matches!(
            self,
            GroupField::MerchantCategory | GroupField::RiskTier | GroupField::MerchantCountry
        )
    }
}

/// A record that failed validation or arrived late.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub reason: RejectReason,
    pub partition: u32,
    pub offset: u64,
    /// The record's bytes, unchanged.
    pub raw: Vec<u8>,
}

/// One closed window of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    /// Index of the window spec in the job configuration.
    pub spec: u16,
    pub start: Millis,
    pub end: Millis,
    /// Group-by values joined with `|` (the anomaly `key`); split for columns.
    pub key: String,
    pub count: i64,
    pub sum_cents: i64,
    pub min_cents: i64,
    pub max_cents: i64,
}

impl WindowRow {
    pub fn avg_amount(&self) -> f64 {
        self.sum_cents as f64 / self.count as f64 / 100.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnomalyKind {
    Transaction,
    Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    Amount,
    TxnCount,
    SumCents,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Amount => "amount",
            Metric::TxnCount => "txn_count",
            Metric::SumCents => "sum_cents",
        }
    }
}

/// A z-score alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub key: String,
    pub metric: Metric,
    pub value: f64,
    pub mean: f64,
    pub stddev: f64,
    pub z: f64,
    /// Transaction event time, or window end.
    pub event_time: Millis,
    pub history_count: u64,
    /// Set for `kind = transaction`.
    pub transaction_id: Option<String>,
    /// Set for `kind = window`: spec index, start, end.
    pub window: Option<(u16, Millis, Millis)>,
}

/// Hash maps of operator state: a fast, fixed-seed hasher (keys are ids and
/// group values; iteration order never reaches outputs unsorted).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// 64-bit hash used for key groups and exchange; stable across processes and versions.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Number of key groups that state is split into; fixed so that a job can
/// restore with any number of workers.
pub const KEY_GROUPS: u32 = 256;

#[inline]
pub fn key_group(hash: u64) -> u32 {
    (hash % KEY_GROUPS as u64) as u32
}

/// The worker that owns a key group, for `peers` workers.
#[inline]
pub fn owner_of_group(group: u32, peers: usize) -> u64 {
    (group as usize % peers) as u64
}

/// Exchange route for a key hash: the owner of its key group.
#[inline]
pub fn route(hash: u64) -> u64 {
    // Timely takes the route modulo the number of workers; routing the key
    // group (not the raw hash) keeps "who owns a key" a function of its group.
    key_group(hash) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_packs_and_unpacks_fields() {
        let t = Txn::new(
            5,
            1250,
            Currency::Eur,
            Status::Pending,
            TxnText {
                transaction_id: "t1",
                customer_id: "cust-é",
                merchant: "",
                category: "books",
                timestamp: "2024-01-01T00:00:00Z",
                metadata: "{\"a\":\"b\"}",
            },
            3,
            7,
        );
        assert_eq!(t.transaction_id(), "t1");
        assert_eq!(t.customer_id(), "cust-é");
        assert_eq!(t.merchant(), "");
        assert_eq!(t.category(), "books");
        assert_eq!(t.timestamp_raw(), "2024-01-01T00:00:00Z");
        assert_eq!(t.metadata(), Some("{\"a\":\"b\"}"));
        let none = Txn::new(
            0,
            1,
            Currency::Usd,
            Status::Failed,
            TxnText::default(),
            0,
            0,
        );
        assert_eq!(none.metadata(), None);
    }

    #[test]
    fn routing_is_by_key_group() {
        for h in [0u64, 1, 255, 256, 257, u64::MAX] {
            assert_eq!(route(h), h % 256);
            assert_eq!(owner_of_group(key_group(h), 3), (h % 256) % 3);
        }
    }
}
