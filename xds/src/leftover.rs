//! Which fields of a protobuf message are set. The translation moves every
//! field it understands out of a copy of each message; whatever is still
//! set afterwards is a field meshgate does not implement, and the resource
//! is refused with a NACK that names it (never silently ignored).
//!
//! Hand-written because prost generates no reflection without descriptors:
//! its derived `Debug` prints every top-level field by name in declaration
//! order, so comparing the message's `Debug` with its default's, field by
//! field, names the fields that are set.

use std::fmt::Debug;

/// Names of the top-level fields of `m` that differ from their defaults.
pub fn set_fields<M: Debug + Default + PartialEq>(m: &M) -> Vec<String> {
    let def = M::default();
    if *m == def {
        return Vec::new();
    }
    let a = format!("{m:?}");
    let b = format!("{def:?}");
    let fa = top_fields(&a);
    let fb = top_fields(&b);
    let mut out = Vec::new();
    for (x, y) in fa.iter().zip(fb.iter()) {
        if x != y {
            out.push(x.split(':').next().unwrap_or(x).trim().to_string());
        }
    }
    if out.is_empty() {
        out.push("(unknown field)".into());
    }
    out
}

/// Splits `Name { a: 1, b: "x, y" }` into `["a: 1", "b: \"x, y\""]`.
fn top_fields(s: &str) -> Vec<&str> {
    let (Some(open), Some(close)) = (s.find('{'), s.rfind('}')) else {
        return Vec::new();
    };
    if close <= open {
        return Vec::new();
    }
    let body = &s[open + 1..close];
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(body[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = body[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Clone)]
    struct Inner {
        x: Vec<u32>,
    }
    #[derive(Debug, Default, PartialEq, Clone)]
    struct M {
        name: String,
        inner: Option<Inner>,
        n: u32,
    }

    #[test]
    fn names_set_fields() {
        let mut m = M::default();
        assert!(set_fields(&m).is_empty());
        m.name = "a, {b}\" c".into();
        m.inner = Some(Inner { x: vec![1, 2] });
        assert_eq!(set_fields(&m), vec!["name", "inner"]);
        m.name.clear();
        m.inner = None;
        m.n = 3;
        assert_eq!(set_fields(&m), vec!["n"]);
    }
}
