//! Finds protobuf fields that meshgate's Envoy types do not know (field
//! numbers newer than the protos envoy-types was generated from). prost
//! skips such fields while decoding, so a resource using them would be
//! served as if they were not there: the resource is refused instead,
//! naming the field number.
//!
//! Cheap first: prost's encoding is canonical and never longer than what
//! it decoded, so when the decoded message re-encodes to as many bytes as
//! it came in, nothing was skipped (the common case: one `encoded_len`,
//! no allocation). Otherwise something was dropped: an unknown field, or
//! only a non-canonical encoding (an explicitly encoded default value, an
//! unpacked repeated field). The slow path tells them apart without
//! descriptors, by asking prost itself, record by record of the wire
//! format: a record is known when decoding the message with that record
//! given a non-default value (`probe`) changes the re-encoded length or
//! fails to decode (a known field's payload is parsed; an unknown one is
//! skipped whatever it holds). Known length-delimited records are looked
//! into the same way, as their payload may be a message, so a nested
//! unknown field is found too. Records are edited in a copy of the wire
//! tree and the whole resource re-encoded, so nested message types never
//! need to be named.

use prost::Message;

/// One wire record: field number and value.
#[derive(Clone)]
struct Record {
    field: u64,
    value: Value,
}

#[derive(Clone)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Parses `b` as a sequence of records; `None` if it is not one (then it
/// is a string, bytes or packed scalars, not a message). Groups (wire
/// types 3 and 4, deprecated) are not parsed: `None`.
fn parse(b: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let field = key >> 3;
        if field == 0 {
            return None;
        }
        let value = match key & 7 {
            0 => Value::Varint(read_varint(b, &mut i)?),
            1 => {
                let s = b.get(i..i + 8)?;
                i += 8;
                Value::Fixed64(u64::from_le_bytes(s.try_into().ok()?))
            }
            5 => {
                let s = b.get(i..i + 4)?;
                i += 4;
                Value::Fixed32(u32::from_le_bytes(s.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(b, &mut i)?).ok()?;
                let s = b.get(i..i.checked_add(len)?)?;
                i += len;
                Value::Bytes(s.to_vec())
            }
            _ => return None,
        };
        out.push(Record { field, value });
    }
    Some(out)
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write(records: &[Record], out: &mut Vec<u8>) {
    for r in records {
        let wt = match r.value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        write_varint((r.field << 3) | wt, out);
        match &r.value {
            Value::Varint(v) => write_varint(*v, out),
            Value::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bytes(b) => {
                write_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
        }
    }
}

/// A non-default value of the same wire type: 1, or one byte 0x01 (a
/// one-character string, one byte, one packed element, or a message that
/// fails to parse, tag 0 being invalid).
fn probe(v: &Value) -> Value {
    match v {
        Value::Varint(_) => Value::Varint(1),
        Value::Fixed64(_) => Value::Fixed64(1),
        Value::Fixed32(_) => Value::Fixed32(1),
        Value::Bytes(_) => Value::Bytes(vec![1]),
    }
}

/// How many times the slow path may re-encode the resource: a hostile or
/// odd encoding of a huge resource cannot make it quadratic. Past it the
/// search stops and the resource is refused without a path (what was
/// dropped could not be proven harmless).
const BUDGET: usize = 4096;

fn wire_size(records: &[Record]) -> usize {
    let mut b = Vec::new();
    write(records, &mut b);
    b.len()
}

/// What the search found.
#[derive(Debug, PartialEq, Eq)]
pub enum Unknown {
    /// Field numbers from the resource's top level down to the unknown one.
    Path(Vec<u64>),
    /// Bytes were dropped but the search budget ran out first.
    NotLocated,
}

/// The search over the resource's wire tree; every test re-encodes the
/// whole resource (`rebuild` puts an edited level back into it), so the
/// types of nested messages never need to be known.
struct Search<M> {
    spent: usize,
    _m: std::marker::PhantomData<M>,
}

impl<M: Message + Default> Search<M> {
    /// The re-encoded length of the resource, `None` if it does not
    /// decode (or the budget is spent: `Err`).
    fn len(&mut self, bytes: &[u8]) -> Result<Option<usize>, Unknown> {
        self.spent += 1;
        if self.spent > BUDGET {
            return Err(Unknown::NotLocated);
        }
        Ok(M::decode(bytes).ok().map(|m| m.encoded_len()))
    }

    /// Indices of `level` whose re-encoding is not exactly their own
    /// bytes (something inside was dropped or re-encoded differently),
    /// found by halving: a range whose removal shortens the re-encoding by
    /// its own wire size is intact.
    fn suspects(
        &mut self,
        level: &[Record],
        full: usize,
        range: std::ops::Range<usize>,
        rebuild: &dyn Fn(&[Record]) -> Vec<u8>,
        out: &mut Vec<usize>,
    ) -> Result<(), Unknown> {
        if range.is_empty() {
            return Ok(());
        }
        let mut without = level[..range.start].to_vec();
        without.extend_from_slice(&level[range.end..]);
        let intact = match self.len(&rebuild(&without))? {
            Some(l) => full.checked_sub(l) == Some(wire_size(&level[range.clone()])),
            None => false,
        };
        if intact {
            return Ok(());
        }
        if range.len() == 1 {
            out.push(range.start);
            return Ok(());
        }
        let mid = range.start + range.len() / 2;
        self.suspects(level, full, range.start..mid, rebuild, out)?;
        self.suspects(level, full, mid..range.end, rebuild, out)
    }

    /// The path to the first unknown field at or below `level`.
    fn find(
        &mut self,
        level: &[Record],
        rebuild: &dyn Fn(&[Record]) -> Vec<u8>,
        depth: usize,
    ) -> Result<Option<Vec<u64>>, Unknown> {
        let Some(full) = self.len(&rebuild(level))? else {
            return Ok(None);
        };
        let mut sus = Vec::new();
        self.suspects(level, full, 0..level.len(), rebuild, &mut sus)?;
        for &i in &sus {
            let mut without = level.to_vec();
            without.remove(i);
            let mut probed = level.to_vec();
            probed[i].value = probe(&probed[i].value);
            let a = self.len(&rebuild(&without))?;
            let b = self.len(&rebuild(&probed))?;
            // Known: the probe changes the re-encoding, or does not parse
            // (a known field's payload is read; an unknown one skipped).
            let unknown = matches!((a, b), (Some(a), Some(b)) if a == b) && a == Some(full);
            if unknown {
                return Ok(Some(vec![level[i].field]));
            }
        }
        if depth >= 32 {
            return Ok(None);
        }
        for &i in &sus {
            let Value::Bytes(b) = &level[i].value else {
                continue;
            };
            let Some(inner) = parse(b).filter(|r| !r.is_empty()) else {
                continue;
            };
            let nested = |sub: &[Record]| {
                let mut bytes = Vec::new();
                write(sub, &mut bytes);
                let mut lvl = level.to_vec();
                lvl[i].value = Value::Bytes(bytes);
                rebuild(&lvl)
            };
            if let Some(mut p) = self.find(&inner, &nested, depth + 1)? {
                p.insert(0, level[i].field);
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// A field of `bytes` that `M` does not know, if any; `decoded` is
/// `bytes` decoded as `M`.
pub fn unknown_field<M: Message + Default>(decoded: &M, bytes: &[u8]) -> Option<Unknown> {
    if decoded.encoded_len() >= bytes.len() {
        return None;
    }
    let top = parse(bytes)?;
    let rebuild = |lvl: &[Record]| {
        let mut out = Vec::with_capacity(bytes.len());
        write(lvl, &mut out);
        out
    };
    let mut s = Search::<M> {
        spent: 0,
        _m: std::marker::PhantomData,
    };
    match s.find(&top, &rebuild, 0) {
        Ok(Some(p)) => Some(Unknown::Path(p)),
        Ok(None) => None,
        Err(u) => Some(u),
    }
}

/// `a.b.c` of a field-number path, the top-level field named when `M`
/// knows it (`circuit_breakers(10).1.999`).
pub fn describe<M: Message + Default + std::fmt::Debug + PartialEq>(
    bytes: &[u8],
    path: &[u64],
) -> String {
    let mut parts: Vec<String> = path.iter().map(|n| n.to_string()).collect();
    if path.len() > 1
        && let Some(top) = parse(bytes)
        && let Some(r) = top.iter().find(|r| r.field == path[0])
    {
        let mut one = Vec::new();
        write(std::slice::from_ref(r), &mut one);
        if let Ok(m) = M::decode(one.as_slice())
            && let Some(name) = crate::leftover::set_fields(&m).first()
        {
            parts[0] = format!("{name}({})", path[0]);
        }
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3 as cds;

    fn with_extra(m: &impl Message, extra: &[Record]) -> Vec<u8> {
        let mut b = m.encode_to_vec();
        write(extra, &mut b);
        b
    }

    #[test]
    fn finds_unknown_fields_at_any_depth_and_accepts_non_canonical_encodings() {
        let c = cds::Cluster {
            name: "a".into(),
            circuit_breakers: Some(cds::CircuitBreakers {
                thresholds: vec![Default::default()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let plain = c.encode_to_vec();
        assert_eq!(unknown_field(&c, &plain), None);

        // Top level: field 999 (a varint).
        let b = with_extra(
            &c,
            &[Record {
                field: 999,
                value: Value::Varint(7),
            }],
        );
        let d = cds::Cluster::decode(b.as_slice()).unwrap();
        assert_eq!(unknown_field(&d, &b), Some(Unknown::Path(vec![999])));

        // Nested: circuit_breakers (10) > thresholds (1) > field 777.
        let mut th = Vec::new();
        write(
            &[Record {
                field: 777,
                value: Value::Bytes(b"x".to_vec()),
            }],
            &mut th,
        );
        let mut cb = Vec::new();
        write(
            &[Record {
                field: 1,
                value: Value::Bytes(th),
            }],
            &mut cb,
        );
        let b = with_extra(
            &cds::Cluster {
                name: "a".into(),
                ..Default::default()
            },
            &[Record {
                field: 10,
                value: Value::Bytes(cb),
            }],
        );
        let d = cds::Cluster::decode(b.as_slice()).unwrap();
        let Some(Unknown::Path(p)) = unknown_field(&d, &b) else {
            panic!("not found");
        };
        assert_eq!(p, vec![10, 1, 777]);
        assert_eq!(
            describe::<cds::Cluster>(&b, &p),
            "circuit_breakers(10).1.777"
        );

        // An explicitly encoded default (name = "", field 1) is dropped by
        // the re-encoding but known: accepted.
        let unnamed = cds::Cluster {
            name: String::new(),
            ..c.clone()
        };
        let b = with_extra(
            &unnamed,
            &[Record {
                field: 1,
                value: Value::Bytes(Vec::new()),
            }],
        );
        let d = cds::Cluster::decode(b.as_slice()).unwrap();
        assert!(d.encoded_len() < b.len());
        assert_eq!(unknown_field(&d, &b), None);
    }
}
