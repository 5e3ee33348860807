//! A Hessian writer for the HTTP/JSON gateway (`http_gateway`): the
//! call's arguments, written in one of two dialects.
//!
//! - [`Dialect::V2`]: the Hessian 2.0 serialization spec, as Dubbo 2
//!   (hessian-lite, hessian.js `encoderV2`) reads it.
//! - [`Dialect::Draft`]: the Hessian 2 draft that Hessian 3.x for Java and
//!   SOFA RPC's `sofa-hessian` use for Bolt: `V`/`M` containers ended by
//!   `z`, class definitions `O` and instances `o`, dates `d`, string
//!   chunks `s`.
//!
//! Both share the scalar forms (compact ints and longs, `D` doubles, `S`
//! strings), which is what is written where they agree. Lengths are
//! counted in UTF-16 units, as Java does. Class definitions are written
//! once per message and referred to by index after.

/// Which Hessian grammar to write (and read, `hessian_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Hessian 2.0 (Dubbo).
    V2,
    /// The Hessian 2 draft (SOFA RPC / Bolt).
    Draft,
}

/// Writes Hessian values into a byte vector.
pub struct Writer {
    pub buf: Vec<u8>,
    dialect: Dialect,
    /// Class definitions written so far: (class name, field names).
    classes: Vec<(String, Vec<String>)>,
}

impl Writer {
    pub fn new(dialect: Dialect) -> Self {
        Self {
            buf: Vec::with_capacity(256),
            dialect,
            classes: Vec::new(),
        }
    }

    /// Counts a class definition another writer of the same message wrote
    /// first (so that this writer's own definitions get the next indexes).
    pub fn declare_class(&mut self, class: &str, fields: &[&str]) {
        self.classes.push((
            class.to_string(),
            fields.iter().map(|f| f.to_string()).collect(),
        ));
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn null(&mut self) {
        self.buf.push(b'N');
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { b'T' } else { b'F' });
    }

    /// A 32-bit int in its shortest form (the same in both dialects).
    pub fn int(&mut self, v: i32) {
        let b = &mut self.buf;
        match v {
            -16..=47 => b.push((v + 0x90) as u8),
            -2048..=2047 => {
                b.push((0xc8 + (v >> 8)) as u8);
                b.push(v as u8);
            }
            -262_144..=262_143 => {
                b.push((0xd4 + (v >> 16)) as u8);
                b.push((v >> 8) as u8);
                b.push(v as u8);
            }
            _ => {
                b.push(b'I');
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// A 64-bit long: the compact forms both dialects share, else `L`.
    pub fn long(&mut self, v: i64) {
        let b = &mut self.buf;
        match v {
            -8..=15 => b.push((v + 0xe0) as u8),
            -2048..=2047 => {
                b.push((0xf8 + (v >> 8)) as u8);
                b.push(v as u8);
            }
            -262_144..=262_143 => {
                b.push((0x3c + (v >> 16)) as u8);
                b.push((v >> 8) as u8);
                b.push(v as u8);
            }
            _ => {
                b.push(b'L');
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// A double, always as `D` and 8 bytes (read by every decoder).
    pub fn double(&mut self, v: f64) {
        self.buf.push(b'D');
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A date: milliseconds since the epoch.
    pub fn date(&mut self, millis: i64) {
        self.buf.push(match self.dialect {
            Dialect::V2 => 0x4a,
            Dialect::Draft => b'd',
        });
        self.buf.extend_from_slice(&millis.to_be_bytes());
    }

    /// A string, in chunks of at most 0x7fff UTF-16 units (never splitting
    /// a surrogate pair).
    pub fn string(&mut self, s: &str) {
        let mut start = 0;
        let mut chunk_units = 0usize;
        for (i, c) in s.char_indices() {
            let u = c.len_utf16();
            if chunk_units + u > 0x7fff {
                self.chunk(&s[start..i], chunk_units, false);
                start = i;
                chunk_units = 0;
            }
            chunk_units += u;
        }
        let last = &s[start..];
        if start == 0 && chunk_units <= 31 {
            self.buf.push(chunk_units as u8);
        } else if start == 0 && chunk_units <= 1023 && self.dialect == Dialect::V2 {
            self.buf.push(0x30 + (chunk_units >> 8) as u8);
            self.buf.push(chunk_units as u8);
        } else {
            self.buf.push(b'S');
            self.buf
                .extend_from_slice(&(chunk_units as u16).to_be_bytes());
        }
        self.buf.extend_from_slice(last.as_bytes());
    }

    fn chunk(&mut self, s: &str, units: usize, last: bool) {
        let tag = match (last, self.dialect) {
            (true, _) => b'S',
            (false, Dialect::V2) => b'R',
            (false, Dialect::Draft) => b's',
        };
        self.buf.push(tag);
        self.buf.extend_from_slice(&(units as u16).to_be_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// The start of a list of `len` values, typed (`[string`) or not;
    /// call [`Writer::list_end`] after the values.
    pub fn list_begin(&mut self, len: usize, type_: Option<&str>) {
        match self.dialect {
            Dialect::V2 => match (type_, len) {
                (Some(t), 0..=7) => {
                    self.buf.push(0x70 + len as u8);
                    self.string(t);
                }
                (Some(t), _) => {
                    self.buf.push(0x56);
                    self.string(t);
                    self.int(len as i32);
                }
                (None, 0..=7) => self.buf.push(0x78 + len as u8),
                (None, _) => {
                    self.buf.push(0x58);
                    self.int(len as i32);
                }
            },
            Dialect::Draft => {
                self.buf.push(b'V');
                if let Some(t) = type_ {
                    self.draft_type(t);
                }
                if len < 0x100 {
                    self.buf.push(b'n');
                    self.buf.push(len as u8);
                } else {
                    self.buf.push(b'l');
                    self.buf.extend_from_slice(&(len as u32).to_be_bytes());
                }
            }
        }
    }

    /// The end of a list (fixed-length lists of V2 have none).
    pub fn list_end(&mut self) {
        if self.dialect == Dialect::Draft {
            self.buf.push(b'z');
        }
    }

    fn draft_type(&mut self, t: &str) {
        self.buf.push(b't');
        self.buf.extend_from_slice(&(t.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(t.as_bytes());
    }

    /// The start of a map (untyped, or of a class such as
    /// `java.util.HashMap`); keys and values follow, then
    /// [`Writer::map_end`].
    pub fn map_begin(&mut self, type_: Option<&str>) {
        match (self.dialect, type_) {
            (Dialect::V2, None) => self.buf.push(b'H'),
            (Dialect::V2, Some(t)) => {
                self.buf.push(b'M');
                self.string(t);
            }
            (Dialect::Draft, t) => {
                self.buf.push(b'M');
                if let Some(t) = t {
                    self.draft_type(t);
                }
            }
        }
    }

    pub fn map_end(&mut self) {
        self.buf.push(match self.dialect {
            Dialect::V2 => b'Z',
            Dialect::Draft => b'z',
        });
    }

    /// The start of an object of `class` whose field values follow, in
    /// the order of `fields`. The class definition is written the first
    /// time a (class, fields) pair is used.
    pub fn object_begin(&mut self, class: &str, fields: &[&str]) {
        let known = self.classes.iter().position(|(c, f)| {
            c == class && f.iter().map(String::as_str).eq(fields.iter().copied())
        });
        let def = match known {
            Some(d) => d,
            None => {
                match self.dialect {
                    Dialect::V2 => {
                        self.buf.push(b'C');
                        self.string(class);
                    }
                    Dialect::Draft => {
                        self.buf.push(b'O');
                        self.int(class.len() as i32);
                        self.buf.extend_from_slice(class.as_bytes());
                    }
                }
                self.int(fields.len() as i32);
                for f in fields {
                    self.string(f);
                }
                self.classes.push((
                    class.to_string(),
                    fields.iter().map(|f| f.to_string()).collect(),
                ));
                self.classes.len() - 1
            }
        };
        match self.dialect {
            Dialect::V2 if def < 16 => self.buf.push(0x60 + def as u8),
            Dialect::V2 => {
                self.buf.push(b'O');
                self.int(def as i32);
            }
            Dialect::Draft => {
                self.buf.push(b'o');
                self.int(def as i32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_match_the_spec_examples() {
        let mut w = Writer::new(Dialect::V2);
        for v in [
            0,
            -16,
            47,
            48,
            -2048,
            2047,
            2048,
            -262_144,
            262_143,
            262_144,
            i32::MIN,
        ] {
            w.int(v);
        }
        assert_eq!(
            w.buf,
            [
                &[
                    0x90u8, 0x80, 0xbf, 0xc8, 0x30, 0xc0, 0x00, 0xcf, 0xff, 0xd4, 0x08, 0x00
                ][..],
                &[
                    0xd0, 0x00, 0x00, 0xd7, 0xff, 0xff, b'I', 0x00, 0x04, 0x00, 0x00
                ],
                &[b'I', 0x80, 0, 0, 0],
            ]
            .concat()
        );
        let mut w = Writer::new(Dialect::V2);
        w.long(0);
        w.long(-8);
        w.long(15);
        w.long(16);
        w.long(i64::MAX);
        assert_eq!(&w.buf[..5], &[0xe0, 0xd8, 0xef, 0xf8, 0x10]);
        assert_eq!(w.buf[5], b'L');
        // the captured hessian.js output for "user7" and a date
        let mut w = Writer::new(Dialect::V2);
        w.string("user7");
        w.date(86_400_000);
        assert_eq!(w.buf, b"\x05user7\x4a\x00\x00\x00\x00\x05\x26\x5c\x00");
    }

    #[test]
    fn draft_containers_match_sofa_hessian() {
        // bytes sofa-rpc-node's client wrote for methodArgSigs
        let mut w = Writer::new(Dialect::Draft);
        w.list_begin(1, Some("[java.lang.String"));
        w.string("java.lang.String");
        w.list_end();
        assert_eq!(
            w.buf,
            b"Vt\x00\x11[java.lang.Stringn\x01\x10java.lang.Stringz"
        );
        let mut w = Writer::new(Dialect::Draft);
        w.object_begin("a.B", &["x"]);
        w.int(1);
        w.object_begin("a.B", &["x"]);
        w.int(2);
        assert_eq!(w.buf, b"O\x93a.B\x91\x01xo\x90\x91o\x90\x92");
    }

    #[test]
    fn long_strings_are_chunked() {
        let s = "é".repeat(0x7fff + 10);
        for d in [Dialect::V2, Dialect::Draft] {
            let mut w = Writer::new(d);
            w.string(&s);
            let non_final = if d == Dialect::V2 { b'R' } else { b's' };
            assert_eq!(w.buf[0], non_final);
            assert_eq!(&w.buf[1..3], &[0x7f, 0xff]);
            let at = 3 + 0x7fff * 2;
            assert_eq!(w.buf[at], b'S');
            assert_eq!(&w.buf[at + 1..at + 3], &[0, 10]);
        }
    }
}
