//! `google.api.http` path templates (google/api/http.proto): parsing and
//! matching a request path, with the variables it binds.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```

/// One segment of a template.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments (the rest of the path, in practice).
    Many,
}

/// A variable: a field path bound to the segments `start..end` of the
/// template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Var {
    pub(crate) field: Vec<String>,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    segs: Vec<Seg>,
    pub(crate) vars: Vec<Var>,
    verb: Option<String>,
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub(crate) fn parse(t: &str) -> Result<Self, String> {
        let Some(rest) = t.strip_prefix('/') else {
            return Err(format!("path template '{t}' must start with '/'"));
        };
        let mut p = Parser {
            s: rest.as_bytes(),
            i: 0,
            segs: Vec::new(),
            vars: Vec::new(),
        };
        p.segments(false)?;
        let mut verb = None;
        if p.peek() == Some(b':') {
            p.i += 1;
            let v = p.literal();
            if v.is_empty() {
                return Err(format!("path template '{t}': empty verb"));
            }
            verb = Some(v);
        }
        if p.i != p.s.len() {
            return Err(format!(
                "path template '{t}': unexpected '{}' at {}",
                p.s[p.i] as char,
                p.i + 1
            ));
        }
        // `**` only as the last segment (as Envoy's path matcher), so a
        // match is found without backtracking.
        if let Some(i) = p.segs.iter().position(|s| *s == Seg::Many)
            && i + 1 != p.segs.len()
        {
            return Err(format!(
                "path template '{t}': '**' must be the last segment"
            ));
        }
        Ok(Self {
            segs: p.segs,
            vars: p.vars,
            verb,
        })
    }

    /// How specific the template is (literal segments), to prefer
    /// `/v1/shelves/special` over `/v1/shelves/{id}`.
    pub(crate) fn literals(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, Seg::Literal(_)))
            .count()
            + usize::from(self.verb.is_some())
    }

    /// Matches `path` (without the query); the variables' raw (still
    /// percent-encoded) values, in `vars` order.
    pub(crate) fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(v) = &self.verb {
            rest = rest.strip_suffix(v.as_str())?.strip_suffix(':')?;
        }
        // Segment boundaries (byte offsets) of the request path.
        let mut bounds: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for (i, b) in rest.bytes().enumerate() {
            if b == b'/' {
                bounds.push((start, i));
                start = i + 1;
            }
        }
        bounds.push((start, rest.len()));
        // Spans of request segments each template segment took.
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(self.segs.len());
        let mut k = 0;
        for s in &self.segs {
            match s {
                Seg::Literal(l) => {
                    let (a, b) = *bounds.get(k)?;
                    if &rest[a..b] != l {
                        return None;
                    }
                    spans.push((k, k + 1));
                    k += 1;
                }
                Seg::One => {
                    let (a, b) = *bounds.get(k)?;
                    if a == b {
                        return None;
                    }
                    spans.push((k, k + 1));
                    k += 1;
                }
                Seg::Many => {
                    spans.push((k, bounds.len()));
                    k = bounds.len();
                }
            }
        }
        if k != bounds.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            let (first, _) = spans[v.start];
            let (_, last) = spans[v.end - 1];
            if first == last {
                out.push("");
            } else {
                out.push(&rest[bounds[first].0..bounds[last - 1].1]);
            }
        }
        Some(out)
    }

    /// Whether variable `i` may span several segments (its value keeps
    /// `%2F` encoded then, as a `/` would be ambiguous).
    pub(crate) fn multi_segment(&self, i: usize) -> bool {
        let v = &self.vars[i];
        v.end - v.start > 1 || self.segs[v.start] == Seg::Many
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    segs: Vec<Seg>,
    vars: Vec<Var>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn literal(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b'/' | b'{' | b'}' | b'=' | b':' | b'*') {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// `Segments`, inside a variable when `nested`.
    fn segments(&mut self, nested: bool) -> Result<(), String> {
        loop {
            self.segment(nested)?;
            if self.peek() == Some(b'/') {
                self.i += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, nested: bool) -> Result<(), String> {
        match self.peek() {
            Some(b'*') => {
                self.i += 1;
                if self.peek() == Some(b'*') {
                    self.i += 1;
                    self.segs.push(Seg::Many);
                } else {
                    self.segs.push(Seg::One);
                }
            }
            Some(b'{') if !nested => {
                self.i += 1;
                let start = self.segs.len();
                let field = self.literal();
                let field: Vec<String> = field.split('.').map(str::to_string).collect();
                if field.iter().any(|f| {
                    f.is_empty() || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                }) {
                    return Err(format!("bad variable name '{}'", field.join(".")));
                }
                if self.peek() == Some(b'=') {
                    self.i += 1;
                    self.segments(true)?;
                } else {
                    self.segs.push(Seg::One);
                }
                if self.peek() != Some(b'}') {
                    return Err("variable without its closing '}'".into());
                }
                self.i += 1;
                self.vars.push(Var {
                    field,
                    start,
                    end: self.segs.len(),
                });
            }
            Some(b'{') => return Err("nested variable".into()),
            _ => {
                let l = self.literal();
                if l.is_empty() {
                    return Err(format!("empty segment at {}", self.i + 1));
                }
                self.segs.push(Seg::Literal(l));
            }
        }
        Ok(())
    }
}

/// Which escapes `percent_decode` leaves encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Keep {
    Nothing,
    /// `%2F` (a `/` would be ambiguous in a multi-segment variable).
    Slash,
    /// RFC 6570's reserved characters (gen-delims and sub-delims).
    Reserved,
}

impl Keep {
    fn keeps(self, b: u8) -> bool {
        match self {
            Keep::Nothing => false,
            Keep::Slash => b == b'/',
            Keep::Reserved => b":/?#[]@!$&'()*+,;=".contains(&b),
        }
    }
}

/// Percent-decodes `s`, leaving the escapes `keep` says encoded. `None`
/// on a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str, keep: Keep, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
                if keep.keeps(v) {
                    out.extend_from_slice(&b[i..i + 3]);
                } else {
                    out.push(v);
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_variables_bind_one_segment() {
        let t = Template::parse("/v1/shelves/{shelf}/books/{book.id}").unwrap();
        assert_eq!(t.vars.len(), 2);
        assert_eq!(t.vars[1].field, vec!["book", "id"]);
        assert_eq!(
            t.matches("/v1/shelves/12/books/a%20b"),
            Some(vec!["12", "a%20b"])
        );
        assert_eq!(t.matches("/v1/shelves/12/books"), None);
        assert_eq!(t.matches("/v1/shelves//books/1"), None);
        assert_eq!(t.matches("/v1/shelves/1/books/2/x"), None);
        assert!(!t.multi_segment(0));
    }

    #[test]
    fn double_wildcards_take_the_rest() {
        let t = Template::parse("/v1/{name=projects/*/files/**}").unwrap();
        assert_eq!(
            t.matches("/v1/projects/p1/files/a/b/c"),
            Some(vec!["projects/p1/files/a/b/c"])
        );
        assert_eq!(
            t.matches("/v1/projects/p1/files"),
            Some(vec!["projects/p1/files"])
        );
        assert_eq!(t.matches("/v1/projects/p1/other/a"), None);
        assert!(t.multi_segment(0));
        let t = Template::parse("/static/**").unwrap();
        assert_eq!(t.matches("/static/a/b"), Some(vec![]));
    }

    #[test]
    fn verbs_are_matched_on_the_last_segment() {
        let t = Template::parse("/v1/{name=books/*}:publish").unwrap();
        assert_eq!(t.matches("/v1/books/7:publish"), Some(vec!["books/7"]));
        assert_eq!(t.matches("/v1/books/7"), None);
        assert_eq!(t.matches("/v1/books/7:other"), None);
        assert_eq!(t.literals(), 3);
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in [
            "v1/x",
            "/v1/{",
            "/v1/{a=b/{c}}",
            "/v1/**/x",
            "/v1//x",
            "/v1/{a-b}",
            "/v1/x:",
            "/v1/x}",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn percent_decoding() {
        use Keep::*;
        assert_eq!(percent_decode("a%20b", Nothing, false).unwrap(), "a b");
        assert_eq!(percent_decode("a%2Fb", Slash, false).unwrap(), "a%2Fb");
        assert_eq!(percent_decode("a%2fb", Nothing, false).unwrap(), "a/b");
        assert_eq!(percent_decode("a+b", Nothing, true).unwrap(), "a b");
        assert_eq!(percent_decode("a+b", Nothing, false).unwrap(), "a+b");
        // Envoy's example of ALL_CHARACTERS_EXCEPT_RESERVED.
        assert_eq!(
            percent_decode("%2f%23/%20%2523", Reserved, false).unwrap(),
            "%2f%23/ %23"
        );
        assert_eq!(percent_decode("%3A%41", Slash, false).unwrap(), ":A");
        assert_eq!(percent_decode("%zz", Nothing, false), None);
        assert_eq!(percent_decode("%2", Nothing, false), None);
        assert_eq!(percent_decode("%ff", Nothing, false), None);
    }
}
