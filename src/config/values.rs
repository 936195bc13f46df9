//! The typed values a field of `cluster.toml` can hold: durations, byte
//! sizes, the give-up time, metrics ports and Kinesis positions, each
//! parsed with a message that names the value and the fix.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use tidemark_connectors::kinesis::StartAt;

/// A duration written as `500ms`, `10s`, `5m`, `2h`, `1d` or `0`, parsed
/// once when the file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub(super) i64);

impl Dur {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0.max(0) as u64)
    }
    /// A duration literal of this file's defaults.
    pub(super) fn lit(s: &str) -> Dur {
        Dur(parse_duration(s).expect("a valid default duration"))
    }
    /// Refuses zero: `field` must be greater than zero.
    pub(super) fn positive(self, field: &str) -> Result<i64> {
        if self.0 <= 0 {
            bail!("{field} must be greater than zero");
        }
        Ok(self.0)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                if n == 0 {
                    return Ok(Dur(0));
                }
                Err(E::custom(format!(
                    "{n} has no unit; use a duration such as \"{n}s\", \"{n}ms\" or \"5m\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// `metrics.port`: `9464`, `"9464"`, a range `"9464-9563"` of which each
/// process takes the first free port, or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsPort {
    Off,
    /// The lowest and highest port to try.
    Range(u16, u16),
}

impl fmt::Display for MetricsPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            MetricsPort::Off => f.write_str("off"),
            MetricsPort::Range(lo, hi) if lo == hi => write!(f, "{lo}"),
            MetricsPort::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MetricsPort, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MetricsPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port such as 9464, a range such as \"9464-9563\", or \"off\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MetricsPort, E> {
                if s.trim() == "off" {
                    return Ok(MetricsPort::Off);
                }
                crate::telemetry::parse_ports(s.trim())
                    .map(|(lo, hi)| MetricsPort::Range(lo, hi))
                    .map_err(|e| E::custom(format!("{e:#}")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<MetricsPort, E> {
                let p = u16::try_from(n).map_err(|_| {
                    E::custom(format!("{n} is not a port (0 to 65535); use a port such as 9464, a range such as \"9464-9563\", or \"off\""))
                })?;
                Ok(MetricsPort::Range(p, p))
            }
        }
        d.deserialize_any(V)
    }
}

/// `kinesis.start`, checked at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisStart(pub StartAt);

impl<'de> Deserialize<'de> for KinesisStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KinesisStart, D::Error> {
        let s = String::deserialize(d)?;
        crate::kinesis_job::parse_start("kinesis.start", &s)
            .map(KinesisStart)
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

/// `kinesis.end` as Unix ms (`now` is the time the file is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KinesisEnd(pub i64);

impl<'de> Deserialize<'de> for KinesisEnd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KinesisEnd, D::Error> {
        let s = String::deserialize(d)?;
        crate::kinesis_job::parse_end("kinesis.end", &s)
            .map(KinesisEnd)
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

/// A size in bytes: `"256MiB"`, `"1GiB"`, `"64KB"`, or an integer of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or \"1GiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{n} is negative; {SIZE_USAGE}")))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) const SIZE_USAGE: &str = "use a size such as \"256MiB\", \"1GiB\" or \"512KiB\" (units B, KiB, MiB, GiB, TiB; KB, MB, GB, TB are powers of 1000), or a whole number of bytes";

/// Parses `256MiB`, `1GiB`, `64KB`, `1048576` or `1048576B` into bytes; the
/// error starts with the value and says how to write one.
pub(super) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: write a whole number and a unit; {SIZE_USAGE}")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => return Err(format!("{s:?} has an unknown unit {u:?}; {SIZE_USAGE}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large; {SIZE_USAGE}"))
}

/// `checkpoint.give_up_after`: a duration, or `"never"` (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GiveUpAfter(pub Option<Dur>);

impl GiveUpAfter {
    pub fn duration(self) -> Option<Duration> {
        self.0.map(Dur::duration)
    }
}

impl<'de> Deserialize<'de> for GiveUpAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GiveUpAfter, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GiveUpAfter;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"never\" or a duration such as \"10m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GiveUpAfter, E> {
                if s.trim() == "never" {
                    return Ok(GiveUpAfter(None));
                }
                match parse_duration(s) {
                    Ok(ms) if ms > 0 => Ok(GiveUpAfter(Some(Dur(ms)))),
                    Ok(_) => Err(E::custom(format!(
                        "{s:?} would give up at the first storage error; write a duration such as \"10m\", or \"never\" (the default) to retry until storage is back"
                    ))),
                    Err(m) => Err(E::custom(format!("{m}; or \"never\""))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GiveUpAfter, E> {
                Err(E::custom(format!(
                    "{n} has no unit; use a duration such as \"{n}s\" or \"10m\", or \"never\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d`, or `0` into milliseconds; the
/// error starts with the value and says how to write one.
pub(super) fn parse_duration(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    let usage = "use a duration such as \"30s\", \"500ms\" or \"5m\" (units ms, s, m, h, d)";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration: write a whole number and a unit; {usage}")
    })?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if n == 0 => 1,
        "" => return Err(format!("{s:?} has no unit; {usage}")),
        _ => return Err(format!("{s:?} has an unknown unit {unit:?}; {usage}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large; {usage}"))
}

/// Parses a duration field: `500ms`, `10s`, `5m`, `2h`, `1d`, or `0`.
#[cfg(test)]
pub fn duration_ms(field: &str, s: &str) -> Result<i64> {
    parse_duration(s).map_err(|m| anyhow::anyhow!("{field} = {m}"))
}

pub(super) fn fmt_ms(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
