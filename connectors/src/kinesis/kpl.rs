//! KPL aggregated records (the Kinesis Producer Library's format), decoded
//! by hand: no protobuf dependency for two small messages.
//!
//! An aggregated Kinesis record is
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf bytes (16)
//!
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! As the KCL does, a record that does not start with the magic, whose body
//! is empty, whose MD5 does not match, or whose body does not decode (bad
//! varint or length, a required field missing, a table index out of range)
//! is a plain record and is delivered whole. Unknown fields are skipped,
//! as protobuf parsers do. Unlike the KCL, user records whose hash key falls
//! outside the shard's range are *not* dropped: every user record is
//! delivered (dropping them loses data when an aggregate straddles a split).

/// The 4 bytes every KPL aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Length of the MD5 trailer.
pub const DIGEST_LEN: usize = 16;

/// One user record inside an aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRecord<'a> {
    pub partition_key: &'a [u8],
    pub explicit_hash_key: Option<&'a [u8]>,
    pub data: &'a [u8],
}

/// The user records of a KPL aggregated record, in order; `None` when
/// `record` is not a valid aggregate and must be read as one plain record.
/// An aggregate may hold no user records (`Some(vec![])`).
pub fn deaggregate(record: &[u8]) -> Option<Vec<UserRecord<'_>>> {
    use md5::{Digest, Md5};
    if record.len() <= MAGIC.len() + DIGEST_LEN || record[..MAGIC.len()] != MAGIC {
        return None;
    }
    let body = &record[MAGIC.len()..record.len() - DIGEST_LEN];
    let trailer = &record[record.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != trailer {
        return None;
    }
    decode_aggregate(body)
}

/// Builds an aggregated record of `records` (`(partition key, data)`), as
/// the KPL would: for tests and tools that need KPL-shaped input.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut keys: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    let mut entries = Vec::new();
    for (key, data) in records {
        let index = match keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        let mut rec = Vec::new();
        put_varint(&mut rec, 1 << 3); // partition_key_index, varint
        put_varint(&mut rec, index as u64);
        put_bytes(&mut rec, 3, data);
        entries.push(rec);
    }
    for k in &keys {
        put_bytes(&mut body, 1, k.as_bytes());
    }
    for rec in &entries {
        put_bytes(&mut body, 3, rec);
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(Md5::digest(&body).as_slice());
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A field's value: what the decoder needs of the four wire types.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return None; // more than 64 bits
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next field number and value; `None` on malformed input.
    fn field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return None;
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            // Groups (3, 4) are not used by this format; 6, 7 do not exist.
            _ => return None,
        };
        Some((field, value))
    }
}

fn decode_aggregate(body: &[u8]) -> Option<Vec<UserRecord<'_>>> {
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut hash_keys: Vec<&[u8]> = Vec::new();
    // (partition key index, explicit hash key index, data)
    let mut raw: Vec<(u64, Option<u64>, &[u8])> = Vec::new();
    let mut r = Reader::new(body);
    while !r.done() {
        match r.field()? {
            (1, Value::Bytes(b)) => keys.push(b),
            (2, Value::Bytes(b)) => hash_keys.push(b),
            (3, Value::Bytes(b)) => raw.push(decode_record(b)?),
            _ => {} // unknown field (or a known one with another wire type): skipped
        }
    }
    raw.into_iter()
        .map(|(pk, ehk, data)| {
            let partition_key = *keys.get(usize::try_from(pk).ok()?)?;
            let explicit_hash_key = match ehk {
                Some(i) => Some(*hash_keys.get(usize::try_from(i).ok()?)?),
                None => None,
            };
            Some(UserRecord {
                partition_key,
                explicit_hash_key,
                data,
            })
        })
        .collect()
}

fn decode_record(buf: &[u8]) -> Option<(u64, Option<u64>, &[u8])> {
    let mut pk = None;
    let mut ehk = None;
    let mut data = None;
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => pk = Some(v),
            (2, Value::Varint(v)) => ehk = Some(v),
            (3, Value::Bytes(b)) => data = Some(b),
            _ => {} // tags (4) and unknown fields
        }
    }
    Some((pk?, ehk, data?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    /// An aggregate written out byte by byte from the format's definition:
    /// keys ["k1", "k2"], hash keys ["42"], record 0 = (key 0, hash key 0,
    /// "hello", one tag "t" = "v"), record 1 = (key 1, "\x00\xff").
    fn body() -> Vec<u8> {
        let mut b = vec![
            0x0A, 0x02, b'k', b'1', // field 1 (partition_key_table), len 2, "k1"
            0x0A, 0x02, b'k', b'2', // field 1, len 2, "k2"
            0x12, 0x02, b'4', b'2', // field 2 (explicit_hash_key_table), len 2, "42"
        ];
        // field 3 (records), len 19: Record {
        //   08 00        partition_key_index = 0
        //   10 00        explicit_hash_key_index = 0
        //   1A 05 hello  data = "hello"
        //   22 06 (0A 01 't' 12 01 'v')  tags = [Tag { key "t", value "v" }]
        // }
        b.extend_from_slice(&[0x1A, 19]);
        b.extend_from_slice(&[0x08, 0x00, 0x10, 0x00, 0x1A, 0x05]);
        b.extend_from_slice(b"hello");
        b.extend_from_slice(&[0x22, 0x06, 0x0A, 0x01, b't', 0x12, 0x01, b'v']);
        // field 3, len 6: Record { partition_key_index = 1, data = 00 FF }
        b.extend_from_slice(&[0x1A, 0x06, 0x08, 0x01, 0x1A, 0x02, 0x00, 0xFF]);
        b
    }

    fn framed(body: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut r = vec![0xF3, 0x89, 0x9A, 0xC2];
        r.extend_from_slice(body);
        r.extend_from_slice(digest);
        r
    }

    #[test]
    fn deaggregates_a_record_built_from_the_format_definition() {
        let body = body();
        let digest = Md5::digest(&body);
        assert_eq!(digest.len(), 16);
        let rec = framed(&body, &digest);
        let users = deaggregate(&rec).expect("a valid aggregate");
        assert_eq!(
            users,
            vec![
                UserRecord {
                    partition_key: b"k1",
                    explicit_hash_key: Some(b"42"),
                    data: b"hello",
                },
                UserRecord {
                    partition_key: b"k2",
                    explicit_hash_key: None,
                    data: &[0x00, 0xFF],
                },
            ]
        );
    }

    #[test]
    fn a_bad_digest_or_a_missing_magic_is_a_plain_record() {
        let body = body();
        let mut digest = Md5::digest(&body).to_vec();
        digest[15] ^= 1;
        assert_eq!(deaggregate(&framed(&body, &digest)), None);
        // Right digest, wrong magic.
        let mut rec = framed(&body, &Md5::digest(&body));
        rec[3] = 0xC3;
        assert_eq!(deaggregate(&rec), None);
        // Plain data, and the magic followed by nothing but a digest.
        assert_eq!(deaggregate(b"{\"a\":1}"), None);
        assert_eq!(deaggregate(&framed(&[], &Md5::digest([]))), None);
    }

    #[test]
    fn a_truncated_or_malformed_body_is_a_plain_record() {
        let body = body();
        // Every proper prefix of the body with its own (correct) digest:
        // the cut falls inside a field (plain) or between fields (then it
        // decodes to fewer records, never to garbage).
        let whole = framed(&body, &Md5::digest(&body));
        let full = deaggregate(&whole).unwrap();
        for cut in 1..body.len() {
            let b = &body[..cut];
            let rec = framed(b, &Md5::digest(b));
            if let Some(users) = deaggregate(&rec) {
                assert!(users.len() < full.len(), "cut {cut}");
                assert_eq!(users[..], full[..users.len()], "cut {cut}");
            }
        }
        // Cut inside record 1's data: a length running past the end.
        let b = &body[..body.len() - 1];
        assert_eq!(
            deaggregate(&framed(b, &Md5::digest(b))).map(|u| u.len()),
            None
        );
        // The whole record truncated (trailer cut): the digest no longer matches.
        let rec = framed(&body, &Md5::digest(&body));
        assert_eq!(deaggregate(&rec[..rec.len() - 1]), None);
        // A partition key index out of range.
        let mut bad = body.clone();
        let at = bad.len() - 5; // the `01` of `08 01` in record 1
        assert_eq!(bad[at], 0x01);
        bad[at] = 0x07;
        assert_eq!(deaggregate(&framed(&bad, &Md5::digest(&bad))), None);
        // A record without data (required).
        let no_data = [0x0A, 0x01, b'k', 0x1A, 0x02, 0x08, 0x00];
        assert_eq!(deaggregate(&framed(&no_data, &Md5::digest(no_data))), None);
    }

    #[test]
    fn aggregate_round_trips() {
        let recs: Vec<(&str, &[u8])> = vec![("a", b"1"), ("b", b""), ("a", &[0xF3, 0x89])];
        let rec = aggregate(&recs);
        let users = deaggregate(&rec).unwrap();
        let got: Vec<(&[u8], &[u8])> = users.iter().map(|u| (u.partition_key, u.data)).collect();
        let want: Vec<(&[u8], &[u8])> = recs.iter().map(|(k, d)| (k.as_bytes(), *d)).collect();
        assert_eq!(got, want);
        assert_eq!(deaggregate(&aggregate(&[])), None, "an empty body is plain");
    }
}
