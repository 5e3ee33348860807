//! Just enough Hessian 2 (the serialization Dubbo and SOFA RPC use by
//! default) to route a request: read strings (compact, medium, `S` and
//! chunked `R`), read integers, and skip any other value so the attachments
//! map after the call arguments can be reached. Hand-written because no
//! maintained Rust crate reads Hessian 2 from a borrowed buffer without
//! building the whole object graph, and routing must not pay for that.
//!
//! Network input is hostile: every length is checked against the bytes
//! actually present (a string's length counts UTF-16 units, so it is walked
//! character by character), nesting is bounded, and class definitions are
//! capped. The grammar is the Hessian 2.0 serialization protocol spec.

/// Why a Hessian value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HessianError(pub &'static str);

impl std::fmt::Display for HessianError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for HessianError {}

type Result<T> = std::result::Result<T, HessianError>;

const MAX_DEPTH: usize = 32;
const MAX_CLASS_DEFS: usize = 1024;
const MAX_FIELDS: usize = 1024;
// No string length cap of its own: every string lies inside the frame's
// body, which the codec has already bounded by `max_body_bytes`, so a cap
// here could only refuse calls the provider accepts.

/// A cursor over a Hessian 2 byte sequence.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Field counts of the class definitions seen so far (`C`).
    classes: Vec<usize>,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            classes: Vec::new(),
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Skips `n` raw bytes; `None` past the end.
    pub fn advance(&mut self, n: usize) -> Option<()> {
        self.take(n).ok().map(drop)
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(HessianError("truncated value"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(HessianError("length beyond the body"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Whether the next value is a string (or null, read as "").
    pub fn next_is_string(&self) -> bool {
        matches!(
            self.peek(),
            Some(0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' | b'N')
        )
    }

    /// Reads a string; `N` (null) reads as "".
    pub fn read_string(&mut self) -> Result<String> {
        let mut out = String::new();
        self.string(Some(&mut out))?;
        Ok(out)
    }

    /// Steps over a string (or null) without keeping it: skipped call
    /// arguments cost no allocation.
    fn skip_string(&mut self) -> Result<()> {
        self.string(None)
    }

    /// Walks one string value (all its chunks), appending it to `out` when
    /// given. Its length is bounded only by the bytes present.
    fn string(&mut self, mut out: Option<&mut String>) -> Result<()> {
        let mut first = true;
        loop {
            let tag = self.byte()?;
            let (len, last) = match tag {
                b'N' if first => return Ok(()),
                0x00..=0x1f => (tag as usize, true),
                0x30..=0x33 => (((tag as usize - 0x30) << 8) | self.byte()? as usize, true),
                b'S' | b'R' => {
                    let hi = self.byte()? as usize;
                    let lo = self.byte()? as usize;
                    ((hi << 8) | lo, tag == b'S')
                }
                _ => return Err(HessianError("expected a string")),
            };
            first = false;
            self.utf8_units(len, out.as_deref_mut())?;
            if last {
                return Ok(());
            }
        }
    }

    /// Walks `units` UTF-16 code units of (modified) UTF-8, appending the
    /// characters to `out` when given. A 4-byte sequence is two units.
    fn utf8_units(&mut self, units: usize, mut out: Option<&mut String>) -> Result<()> {
        let mut n = 0;
        while n < units {
            let b = self.byte()?;
            let width = match b {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => return Err(HessianError("invalid UTF-8 in string")),
            };
            let start = self.pos - 1;
            self.take(width - 1)?;
            n += if width == 4 { 2 } else { 1 };
            if let Some(o) = out.as_deref_mut() {
                match std::str::from_utf8(&self.buf[start..self.pos]) {
                    Ok(s) => o.push_str(s),
                    // Java's modified UTF-8 (encoded surrogates, C0 80):
                    // kept readable, never trusted further.
                    Err(_) => o.push(char::REPLACEMENT_CHARACTER),
                }
            }
        }
        Ok(())
    }

    /// Reads an `int` in any of its encodings.
    pub fn read_int(&mut self) -> Result<i64> {
        let b = self.byte()?;
        Ok(match b {
            0x80..=0xbf => b as i64 - 0x90,
            0xc0..=0xcf => ((b as i64 - 0xc8) << 8) | self.byte()? as i64,
            0xd0..=0xd7 => {
                let s = self.take(2)?;
                ((b as i64 - 0xd4) << 16) | ((s[0] as i64) << 8) | s[1] as i64
            }
            b'I' => {
                let s = self.take(4)?;
                i32::from_be_bytes([s[0], s[1], s[2], s[3]]) as i64
            }
            _ => return Err(HessianError("expected an int")),
        })
    }

    /// A list or map type: a string, or an int referring to an earlier one.
    pub(crate) fn skip_type(&mut self) -> Result<()> {
        if self.next_is_string() {
            self.skip_string()
        } else {
            self.read_int().map(drop)
        }
    }

    fn length(&mut self) -> Result<usize> {
        let n = self.read_int()?;
        usize::try_from(n).map_err(|_| HessianError("negative length"))
    }

    /// Skips one value of any type.
    pub fn skip_value(&mut self) -> Result<()> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(HessianError("values nested too deeply"));
        }
        let tag = self.peek().ok_or(HessianError("truncated value"))?;
        match tag {
            // strings
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => {
                self.skip_string()?;
            }
            b'N' | b'T' | b'F' => self.pos += 1,
            // ints
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => {
                self.read_int()?;
            }
            // longs
            0xd8..=0xef => self.pos += 1,
            0xf0..=0xff => {
                self.take(2)?;
            }
            0x38..=0x3f => {
                self.take(3)?;
            }
            0x59 => {
                self.take(5)?;
            }
            b'L' => {
                self.take(9)?;
            }
            // doubles
            0x5b | 0x5c => self.pos += 1,
            0x5d => {
                self.take(2)?;
            }
            0x5e => {
                self.take(3)?;
            }
            0x5f => {
                self.take(5)?;
            }
            b'D' => {
                self.take(9)?;
            }
            // dates
            0x4a => {
                self.take(9)?;
            }
            0x4b => {
                self.take(5)?;
            }
            // binary
            0x20..=0x2f => {
                self.pos += 1;
                self.take((tag - 0x20) as usize)?;
            }
            0x34..=0x37 => {
                self.pos += 1;
                let lo = self.byte()? as usize;
                self.take((((tag - 0x34) as usize) << 8) | lo)?;
            }
            b'B' | b'A' => loop {
                let t = self.byte()?;
                let s = self.take(2)?;
                self.take(((s[0] as usize) << 8) | s[1] as usize)?;
                if t == b'B' {
                    break;
                }
                match self.peek() {
                    Some(b'A' | b'B') => {}
                    _ => return Err(HessianError("bad binary chunk")),
                }
            },
            // reference to an earlier value
            0x51 => {
                self.pos += 1;
                self.read_int()?;
            }
            // lists
            0x55 => {
                self.pos += 1;
                self.skip_type()?;
                self.skip_until_end(depth)?;
            }
            0x57 => {
                self.pos += 1;
                self.skip_until_end(depth)?;
            }
            0x56 => {
                self.pos += 1;
                self.skip_type()?;
                let n = self.length()?;
                self.skip_n(n, depth)?;
            }
            0x58 => {
                self.pos += 1;
                let n = self.length()?;
                self.skip_n(n, depth)?;
            }
            0x70..=0x77 => {
                self.pos += 1;
                self.skip_type()?;
                self.skip_n((tag - 0x70) as usize, depth)?;
            }
            0x78..=0x7f => {
                self.pos += 1;
                self.skip_n((tag - 0x78) as usize, depth)?;
            }
            // maps
            b'M' => {
                self.pos += 1;
                self.skip_type()?;
                self.skip_until_end(depth)?;
            }
            b'H' => {
                self.pos += 1;
                self.skip_until_end(depth)?;
            }
            // class definition, then the value that follows it
            b'C' => {
                self.pos += 1;
                self.skip_string()?;
                let n = self.length()?;
                if n > MAX_FIELDS || self.classes.len() >= MAX_CLASS_DEFS {
                    return Err(HessianError("too many class fields or definitions"));
                }
                for _ in 0..n {
                    self.skip_string()?;
                }
                self.classes.push(n);
                self.skip_depth(depth)?;
            }
            // object instances
            b'O' | 0x60..=0x6f => {
                self.pos += 1;
                let def = if tag == b'O' {
                    self.length()?
                } else {
                    (tag - 0x60) as usize
                };
                let n = *self
                    .classes
                    .get(def)
                    .ok_or(HessianError("object of an undefined class"))?;
                self.skip_n(n, depth)?;
            }
            _ => return Err(HessianError("unknown value tag")),
        }
        if self.pos > self.buf.len() {
            return Err(HessianError("truncated value"));
        }
        Ok(())
    }

    fn skip_n(&mut self, n: usize, depth: usize) -> Result<()> {
        for _ in 0..n {
            if self.at_end() {
                return Err(HessianError("truncated list"));
            }
            self.skip_depth(depth + 1)?;
        }
        Ok(())
    }

    /// Skips values up to and including the `Z` end marker.
    fn skip_until_end(&mut self, depth: usize) -> Result<()> {
        loop {
            match self.peek() {
                None => return Err(HessianError("missing end of list or map")),
                Some(b'Z') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => self.skip_depth(depth + 1)?,
            }
        }
    }

    /// Reads a map (`H` or `M type`) whose string values are collected;
    /// other values are skipped. At most `max` entries are kept.
    pub fn read_string_map(&mut self, max: usize) -> Result<Vec<(String, String)>> {
        match self.byte()? {
            b'H' => {}
            b'M' => self.skip_type()?,
            _ => return Err(HessianError("expected a map")),
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(HessianError("missing end of map")),
                Some(b'Z') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(_) => {
                    let key = if self.next_is_string() {
                        Some(self.read_string()?)
                    } else {
                        self.skip_depth(1)?;
                        None
                    };
                    if self.peek().is_none() {
                        return Err(HessianError("map key without a value"));
                    }
                    let value = if self.next_is_string() {
                        Some(self.read_string()?)
                    } else {
                        self.skip_depth(1)?;
                        None
                    };
                    if let (Some(k), Some(v)) = (key, value)
                        && out.len() < max
                    {
                        out.push((k, v));
                    }
                }
            }
        }
    }
}

/// Appends `s` as one Hessian string (`S`, 16-bit length): read by Hessian 1
/// and 2 decoders alike. Longer messages are cut at 32767 characters.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let mut units = 0usize;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let u = c.len_utf16();
        if units + u > 0x7fff {
            break;
        }
        units += u;
        end = i + c.len_utf8();
    }
    // Hessian counts UTF-16 units; a 4-byte UTF-8 char is two, which Java
    // decoders read as a surrogate pair.
    out.push(b'S');
    out.extend_from_slice(&(units as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut r = Reader::new(b"\x05hello");
        assert_eq!(r.read_string().unwrap(), "hello");
        let mut long = vec![0x30 | 1, 4];
        long.extend(std::iter::repeat_n(b'a', 260));
        assert_eq!(Reader::new(&long).read_string().unwrap().len(), 260);
        // chunked: R(2) "ab" then final compact "c"
        let mut r = Reader::new(b"R\x00\x02ab\x01c");
        assert_eq!(r.read_string().unwrap(), "abc");
        // lengths count characters, not bytes
        let s = "é𝄞".as_bytes().to_vec();
        let mut b = vec![3u8];
        b.extend(&s);
        assert_eq!(Reader::new(&b).read_string().unwrap(), "é𝄞");
        let mut w = Vec::new();
        write_string(&mut w, "no route");
        assert_eq!(Reader::new(&w).read_string().unwrap(), "no route");
    }

    #[test]
    fn strings_longer_than_a_mebibyte_are_read_and_skipped() {
        // 1,100,000 characters in 0x7fff-unit `R` chunks and a final `S`.
        let n = 1_100_000usize;
        let mut b = Vec::new();
        let mut left = n;
        while left > 0x7fff {
            b.extend(b"R\x7f\xff");
            b.extend(std::iter::repeat_n(b'x', 0x7fff));
            left -= 0x7fff;
        }
        b.push(b'S');
        b.extend((left as u16).to_be_bytes());
        b.extend(std::iter::repeat_n(b'x', left));
        b.push(0x91);
        assert_eq!(Reader::new(&b).read_string().unwrap().len(), n);
        let mut r = Reader::new(&b);
        r.skip_value().unwrap();
        assert_eq!(r.read_int().unwrap(), 1);
        assert!(r.at_end());
    }

    #[test]
    fn lying_lengths_fail() {
        assert!(Reader::new(b"\x1fshort").read_string().is_err());
        assert!(Reader::new(b"S\xff\xffabc").read_string().is_err());
        assert!(Reader::new(b"R\x00\x01a").read_string().is_err());
        assert!(Reader::new(b"\x02\xe0a").read_string().is_err());
        assert!(Reader::new(b"\x58\x9f").skip_value().is_err());
        assert!(Reader::new(b"\x58\xd7\xff\xff").skip_value().is_err());
        assert!(Reader::new(b"O\x90").skip_value().is_err());
        assert!(Reader::new(b"\x34\xff").skip_value().is_err());
        let deep = vec![0x57u8; 1000];
        assert!(Reader::new(&deep).skip_value().is_err());
    }

    #[test]
    fn skips_values_then_reads_map() {
        // class def com.X {a, b}, instance (1, "x"), list [1, 2], then a map
        let mut b = Vec::new();
        b.extend(b"C\x05com.X\x92\x01a\x01b");
        b.extend(b"\x60\x91\x01x");
        b.extend(b"\x7a\x91\x92");
        b.extend(b"H\x05group\x03grp\x01n\x91Z");
        let mut r = Reader::new(&b);
        // the definition and its instance are one value
        r.skip_value().unwrap();
        r.skip_value().unwrap();
        let m = r.read_string_map(16).unwrap();
        assert_eq!(m, vec![("group".to_string(), "grp".to_string())]);
        assert!(r.at_end());
    }
}
