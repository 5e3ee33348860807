//! Decodes one Hessian value (a provider's result or exception) into a
//! JSON tree, for the HTTP/JSON gateway. Both dialects of
//! `hessian_write` are read. Objects become JSON objects whose `$class`
//! member names their class; dates become RFC 3339 strings (UTC,
//! milliseconds); binary becomes a standard base64 string.
//!
//! Network input is hostile: nesting is bounded ([`MAX_DEPTH`]), so is the
//! number of JSON nodes produced ([`MAX_NODES`], references included, so
//! that a shared value referenced many times cannot blow up the answer),
//! every length is checked against the bytes present, and class
//! definitions are capped.

use super::hessian::HessianError;
use super::hessian_write::Dialect;
use serde_json::{Map, Number, Value};

type Result<T> = std::result::Result<T, HessianError>;

pub const MAX_DEPTH: usize = 64;
pub const MAX_NODES: usize = 200_000;
const MAX_CLASS_DEFS: usize = 1024;
const MAX_FIELDS: usize = 1024;
/// Values kept for back-references (`Q` / `R` / `J` / `K`).
const MAX_REFS: usize = 65_536;

/// A reader of one message's values (class definitions and references
/// span the message).
pub struct ValueReader<'a> {
    buf: &'a [u8],
    pos: usize,
    dialect: Dialect,
    classes: Vec<(String, Vec<String>)>,
    /// V2 type references (list and map types).
    types: Vec<String>,
    refs: Vec<Option<Value>>,
    nodes: usize,
}

fn err(m: &'static str) -> HessianError {
    HessianError(m)
}

impl<'a> ValueReader<'a> {
    pub fn new(buf: &'a [u8], dialect: Dialect) -> Self {
        Self {
            buf,
            pos: 0,
            dialect,
            classes: Vec::new(),
            types: Vec::new(),
            refs: Vec::new(),
            nodes: 0,
        }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    fn peek(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(err("truncated value"))
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(err("length beyond the body"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<usize> {
        let s = self.take(2)?;
        Ok(((s[0] as usize) << 8) | s[1] as usize)
    }

    fn i32(&mut self) -> Result<i32> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn i64(&mut self) -> Result<i64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(err("result has too many values"));
        }
        Ok(())
    }

    /// Reads an int (any encoding).
    pub fn read_int(&mut self) -> Result<i32> {
        let b = self.byte()?;
        self.int_after(b)
    }

    fn int_after(&mut self, b: u8) -> Result<i32> {
        Ok(match b {
            0x80..=0xbf => b as i32 - 0x90,
            0xc0..=0xcf => ((b as i32 - 0xc8) << 8) | self.byte()? as i32,
            0xd0..=0xd7 => {
                let s = self.take(2)?;
                ((b as i32 - 0xd4) << 16) | ((s[0] as i32) << 8) | s[1] as i32
            }
            b'I' => self.i32()?,
            _ => return Err(err("expected an int")),
        })
    }

    fn length(&mut self) -> Result<usize> {
        usize::try_from(self.read_int()?).map_err(|_| err("negative length"))
    }

    /// `units` UTF-16 units of UTF-8 appended to `out`.
    fn utf8_units(&mut self, units: usize, out: &mut String) -> Result<()> {
        let mut n = 0;
        while n < units {
            let b = self.byte()?;
            let width = match b {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => return Err(err("invalid UTF-8 in string")),
            };
            let start = self.pos - 1;
            self.take(width - 1)?;
            n += if width == 4 { 2 } else { 1 };
            match std::str::from_utf8(&self.buf[start..self.pos]) {
                Ok(s) => out.push_str(s),
                Err(_) => out.push(char::REPLACEMENT_CHARACTER),
            }
        }
        Ok(())
    }

    /// A string whose first tag is `tag` (already read).
    fn string_after(&mut self, mut tag: u8) -> Result<String> {
        let mut out = String::new();
        loop {
            let (len, last) = match tag {
                0x00..=0x1f => (tag as usize, true),
                0x30..=0x33 if self.dialect == Dialect::V2 => {
                    (((tag as usize - 0x30) << 8) | self.byte()? as usize, true)
                }
                b'S' => (self.u16()?, true),
                b'R' if self.dialect == Dialect::V2 => (self.u16()?, false),
                b's' if self.dialect == Dialect::Draft => (self.u16()?, false),
                _ => return Err(err("expected a string chunk")),
            };
            self.utf8_units(len, &mut out)?;
            if last {
                return Ok(out);
            }
            tag = self.byte()?;
        }
    }

    /// Reads a string (null reads as "").
    pub fn read_string(&mut self) -> Result<String> {
        let t = self.byte()?;
        if t == b'N' {
            return Ok(String::new());
        }
        self.string_after(t)
    }

    /// A V2 list/map type: a string or a reference to an earlier one.
    fn v2_type(&mut self) -> Result<String> {
        let t = self.peek()?;
        if matches!(t, 0x00..=0x1f | 0x30..=0x33 | b'S' | b'R') {
            let s = self.read_string()?;
            if self.types.len() < MAX_REFS {
                self.types.push(s.clone());
            }
            Ok(s)
        } else {
            let i = self.length()?;
            self.types
                .get(i)
                .cloned()
                .ok_or(err("reference to an undefined type"))
        }
    }

    /// A draft type (`t` len bytes, or `u` ref), if present.
    fn draft_type(&mut self) -> Result<Option<String>> {
        match self.peek()? {
            b't' => {
                self.pos += 1;
                let n = self.u16()?;
                let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                if self.types.len() < MAX_REFS {
                    self.types.push(s.clone());
                }
                Ok(Some(s))
            }
            b'u' => {
                self.pos += 1;
                let i = self.length()?;
                Ok(Some(
                    self.types
                        .get(i)
                        .cloned()
                        .ok_or(err("reference to an undefined type"))?,
                ))
            }
            _ => Ok(None),
        }
    }

    /// Reads one value.
    pub fn read_value(&mut self) -> Result<Value> {
        self.value(0)
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(err("values nested too deeply"));
        }
        self.count(1)?;
        let tag = self.byte()?;
        let v2 = self.dialect == Dialect::V2;
        Ok(match tag {
            b'N' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => Value::from(self.int_after(tag)?),
            0x00..=0x1f | b'S' => Value::String(self.string_after(tag)?),
            0x30..=0x33 | b'R' if v2 => Value::String(self.string_after(tag)?),
            b's' if !v2 => Value::String(self.string_after(tag)?),
            // longs
            0xd8..=0xef => Value::from(tag as i64 - 0xe0),
            0xf0..=0xff => Value::from(((tag as i64 - 0xf8) << 8) | self.byte()? as i64),
            0x38..=0x3f => {
                let s = self.take(2)?;
                Value::from(((tag as i64 - 0x3c) << 16) | ((s[0] as i64) << 8) | s[1] as i64)
            }
            0x59 if v2 => Value::from(self.i32()? as i64),
            0x77 if !v2 => Value::from(self.i32()? as i64),
            b'L' => Value::from(self.i64()?),
            // doubles
            b'D' => {
                let bits = self.i64()? as u64;
                double(f64::from_bits(bits))
            }
            0x5b if v2 => double(0.0),
            0x5c if v2 => double(1.0),
            0x5d if v2 => double(self.byte()? as i8 as f64),
            0x5e if v2 => {
                let s = self.take(2)?;
                double(i16::from_be_bytes([s[0], s[1]]) as f64)
            }
            0x5f if v2 => double(self.i32()? as f64 / 1000.0),
            0x67 if !v2 => double(0.0),
            0x68 if !v2 => double(1.0),
            0x69 if !v2 => double(self.byte()? as i8 as f64),
            0x6a if !v2 => {
                let s = self.take(2)?;
                double(i16::from_be_bytes([s[0], s[1]]) as f64)
            }
            0x6b if !v2 => {
                let s = self.take(4)?;
                double(f32::from_be_bytes([s[0], s[1], s[2], s[3]]) as f64)
            }
            // dates
            0x4a if v2 => Value::String(rfc3339(self.i64()?)),
            0x4b if v2 => Value::String(rfc3339(self.i32()? as i64 * 60_000)),
            b'd' if !v2 => Value::String(rfc3339(self.i64()?)),
            // binary
            0x20..=0x2f => {
                let n = (tag - 0x20) as usize;
                Value::String(base64(self.take(n)?))
            }
            0x34..=0x37 if v2 => {
                let n = (((tag - 0x34) as usize) << 8) | self.byte()? as usize;
                Value::String(base64(self.take(n)?))
            }
            b'A' | b'B' if v2 => self.binary(tag, b'A')?,
            b'b' | b'B' if !v2 => self.binary(tag, b'b')?,
            // references
            0x51 if v2 => {
                let i = self.length()?;
                self.reference(i)?
            }
            b'R' if !v2 => {
                let i = usize::try_from(self.i32()?).map_err(|_| err("negative reference"))?;
                self.reference(i)?
            }
            b'J' if !v2 => {
                let i = self.byte()? as usize;
                self.reference(i)?
            }
            b'K' if !v2 => {
                let i = self.u16()?;
                self.reference(i)?
            }
            // V2 lists
            0x55 | 0x57 if v2 => {
                if tag == 0x55 {
                    self.v2_type()?;
                }
                let slot = self.slot();
                let mut items = Vec::new();
                loop {
                    if self.peek()? == b'Z' {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                }
                self.fill(slot, Value::Array(items))
            }
            0x56 | 0x58 | 0x70..=0x7f if v2 => {
                if matches!(tag, 0x56 | 0x70..=0x77) {
                    self.v2_type()?;
                }
                let n = match tag {
                    0x70..=0x77 => (tag - 0x70) as usize,
                    0x78..=0x7f => (tag - 0x78) as usize,
                    _ => self.length()?,
                };
                self.fixed_list(n, depth)?
            }
            // draft lists
            b'V' if !v2 => {
                self.draft_type()?;
                let n = match self.peek()? {
                    b'n' => {
                        self.pos += 1;
                        Some(self.byte()? as usize)
                    }
                    b'l' => {
                        self.pos += 1;
                        Some(usize::try_from(self.i32()?).map_err(|_| err("negative length"))?)
                    }
                    _ => None,
                };
                let slot = self.slot();
                let mut items = Vec::with_capacity(n.unwrap_or(0).min(1024));
                loop {
                    if self.peek()? == b'z' {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                }
                self.fill(slot, Value::Array(items))
            }
            b'v' if !v2 => {
                let _type_ref = self.read_int()?;
                let n = self.length()?;
                self.fixed_list(n, depth)?
            }
            // maps
            b'H' if v2 => self.map(depth, None)?,
            b'M' => {
                let t = if v2 {
                    Some(self.v2_type()?)
                } else {
                    self.draft_type()?
                };
                self.map(depth, t)?
            }
            // class definitions, then the value after them
            b'C' if v2 => {
                let class = self.read_string()?;
                self.class_def(class)?;
                self.nodes -= 1;
                return self.value(depth);
            }
            b'O' if !v2 => {
                let n = self.length()?;
                let class = String::from_utf8_lossy(self.take(n)?).into_owned();
                self.class_def(class)?;
                self.nodes -= 1;
                return self.value(depth);
            }
            // instances
            b'O' if v2 => {
                let d = self.length()?;
                self.object(d, depth)?
            }
            0x60..=0x6f if v2 => self.object((tag - 0x60) as usize, depth)?,
            b'o' if !v2 => {
                let d = self.length()?;
                self.object(d, depth)?
            }
            _ => return Err(err("unknown value tag")),
        })
    }

    /// Chunked binary: `more` tags precede each non-final chunk, `B` the
    /// last one.
    fn binary(&mut self, mut tag: u8, more: u8) -> Result<Value> {
        let mut out = Vec::new();
        loop {
            let n = self.u16()?;
            out.extend_from_slice(self.take(n)?);
            if tag == b'B' {
                return Ok(Value::String(base64(&out)));
            }
            tag = self.byte()?;
            if tag != b'B' && tag != more {
                return Err(err("bad binary chunk"));
            }
        }
    }

    fn class_def(&mut self, class: String) -> Result<()> {
        let n = self.length()?;
        if n > MAX_FIELDS || self.classes.len() >= MAX_CLASS_DEFS {
            return Err(err("too many class fields or definitions"));
        }
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(self.read_string()?);
        }
        self.classes.push((class, fields));
        Ok(())
    }

    fn slot(&mut self) -> Option<usize> {
        (self.refs.len() < MAX_REFS).then(|| {
            self.refs.push(None);
            self.refs.len() - 1
        })
    }

    fn fill(&mut self, slot: Option<usize>, v: Value) -> Value {
        if let Some(s) = slot
            && let Some(r) = self.refs.get_mut(s)
        {
            *r = Some(v.clone());
        }
        v
    }

    /// A back-reference: a copy of the value (counted), or for a value
    /// still being read (a cycle) `{"$ref": i}`.
    fn reference(&mut self, i: usize) -> Result<Value> {
        match self.refs.get(i) {
            None => Err(err("reference to an undefined value")),
            Some(None) => {
                let mut m = Map::new();
                m.insert("$ref".into(), Value::from(i));
                Ok(Value::Object(m))
            }
            Some(Some(v)) => {
                let v = v.clone();
                self.count(nodes(&v))?;
                Ok(v)
            }
        }
    }

    fn fixed_list(&mut self, n: usize, depth: usize) -> Result<Value> {
        if n > self.buf.len() - self.pos {
            return Err(err("list longer than the body"));
        }
        let slot = self.slot();
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(self.fill(slot, Value::Array(items)))
    }

    fn map(&mut self, depth: usize, type_: Option<String>) -> Result<Value> {
        let end = if self.dialect == Dialect::V2 {
            b'Z'
        } else {
            b'z'
        };
        let slot = self.slot();
        let mut m = Map::new();
        if let Some(t) = type_.filter(|t| !t.is_empty() && !t.starts_with("java.util.")) {
            m.insert("$class".into(), Value::String(t));
        }
        loop {
            if self.peek()? == end {
                self.pos += 1;
                break;
            }
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            m.insert(key, v);
        }
        Ok(self.fill(slot, Value::Object(m)))
    }

    fn object(&mut self, def: usize, depth: usize) -> Result<Value> {
        let (class, fields) = self
            .classes
            .get(def)
            .cloned()
            .ok_or(err("object of an undefined class"))?;
        let slot = self.slot();
        let mut m = Map::new();
        m.insert("$class".into(), Value::String(class));
        for f in fields {
            let v = self.value(depth + 1)?;
            m.insert(f, v);
        }
        Ok(self.fill(slot, Value::Object(m)))
    }
}

fn double(f: f64) -> Value {
    // NaN and infinities have no JSON form.
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
        Value::Object(o) => 1 + o.values().map(nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Standard base64 with padding.
fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (c.get(1).copied().unwrap_or(0) as u32) << 8
            | c.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `1970-01-02T00:00:00.000Z` for milliseconds since the epoch (proleptic
/// Gregorian, UTC; days to civil date after Howard Hinnant's algorithm).
pub fn rfc3339(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let ms = millis.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_captured_dubbo_pojo() {
        // hessian.js (dubbo-remoting) writing getUser(7)'s result
        let b = b"C\x11com.meshgate.User\x97\x02id\x04name\x04tags\x04born\x04boss\x05score\x06active`\xe7\x05user7z\x01a\x01bK\x00\x00\x05\xa0N_\x00\x00\x05\xdcT";
        let v = ValueReader::new(b, Dialect::V2).read_value().unwrap();
        assert_eq!(
            v,
            json!({"$class": "com.meshgate.User", "id": 7, "name": "user7",
                   "tags": ["a", "b"], "born": "1970-01-02T00:00:00.000Z",
                   "boss": null, "score": 1.5, "active": true})
        );
    }

    #[test]
    fn reads_the_captured_bolt_response() {
        let b = b"O\xbecom.alipay.sofa.rpc.core.response.SofaResponse\x94\x07isError\x08errorMsg\x0bappResponse\rresponsePropso\x90FNO\xa1com.meshgate.User\x97\x02id\x04name\x04tags\x04born\x04boss\x05score\x06activeo\x91\xe7\x05user7Vn\x02\x01a\x01bzd\x00\x00\x00\x00\x05&\\\x00ND?\xf8\x00\x00\x00\x00\x00\x00TN";
        let v = ValueReader::new(b, Dialect::Draft).read_value().unwrap();
        assert_eq!(v["isError"], json!(false));
        assert_eq!(
            v["appResponse"],
            json!({"$class": "com.meshgate.User", "id": 7, "name": "user7",
                   "tags": ["a", "b"], "born": "1970-01-02T00:00:00.000Z",
                   "boss": null, "score": 1.5, "active": true})
        );
        let m = b"M\x04from\x02p1\x01x\x02hiz";
        let v = ValueReader::new(m, Dialect::Draft).read_value().unwrap();
        assert_eq!(v, json!({"from": "p1", "x": "hi"}));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn hostile_input_is_refused() {
        let deep = vec![0x57u8; 10_000];
        assert!(ValueReader::new(&deep, Dialect::V2).read_value().is_err());
        let deep = [b"Vn\x01".repeat(5000), vec![0x90]].concat();
        assert!(
            ValueReader::new(&deep, Dialect::Draft)
                .read_value()
                .is_err()
        );
        // a list claiming 2^31 items
        assert!(
            ValueReader::new(b"\x58I\x7f\xff\xff\xff", Dialect::V2)
                .read_value()
                .is_err()
        );
        // references fanning out: [x, [x, x], ...] with x a big list
        let mut b = vec![0x57u8, 0x58, 0xc8 + 3, 0xe8];
        b.extend(std::iter::repeat_n(0x90, 1000));
        for _ in 0..1000 {
            b.extend([0x51, 0x91]);
        }
        b.push(b'Z');
        assert!(ValueReader::new(&b, Dialect::V2).read_value().is_err());
        // a cyclic reference reads as a marker
        let v = ValueReader::new(b"\x57\x51\x90Z", Dialect::V2)
            .read_value()
            .unwrap();
        assert_eq!(v, json!([{"$ref": 0}]));
    }
}
