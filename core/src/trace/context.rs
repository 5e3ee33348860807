//! Trace context propagation: reading W3C Trace Context (`traceparent`,
//! `tracestate`) and B3 (multi-header `x-b3-*` and single `b3`), writing
//! W3C `traceparent`. Parsing borrows the header bytes; nothing is
//! allocated until a header is written.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which format an incoming context came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Multi,
    B3Single,
}

/// An incoming trace context: the caller's trace and span, and its
/// sampling decision when it made one (B3 may defer it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: Option<bool>,
    pub format: Format,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `2 * N` hex digits into `N` bytes.
fn hex_into<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_val(s[2 * i])? << 4 | hex_val(s[2 * i + 1])?;
    }
    Some(out)
}

/// A trace id of B3's 16 or 32 digits (a 64-bit one is left-padded).
fn b3_trace_id(s: &[u8]) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_into::<16>(s),
        16 => {
            let low = hex_into::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn valid(trace_id: &[u8; 16], span_id: &[u8; 8]) -> bool {
    trace_id.iter().any(|b| *b != 0) && span_id.iter().any(|b| *b != 0)
}

/// W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`; a later version may
/// append fields after a `-` (kept readable, as the spec asks). Version
/// `ff`, uppercase-free rules aside, all-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_into::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    let trace_id = hex_into::<16>(&v[3..35])?;
    let span_id = hex_into::<8>(&v[36..52])?;
    let flags = hex_into::<1>(&v[53..55])?[0];
    if !valid(&trace_id, &span_id) {
        return None;
    }
    Some(Incoming {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        format: Format::W3c,
    })
}

fn b3_sampled(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// Single `b3`: `{trace}-{span}[-{sampling}[-{parent}]]`; a lone `0`,
/// `1` or `d` is a decision without ids (no context to continue).
pub fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    let mut parts = v.split(|c| *c == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = hex_into::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampled(s)?),
    };
    if !valid(&trace_id, &span_id) {
        return None;
    }
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
        format: Format::B3Single,
    })
}

/// Multi-header B3 (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`,
/// `x-b3-flags: 1` meaning debug, which is sampled).
pub fn parse_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    b3_multi(&scan(h))
}

fn b3_multi(s: &Seen<'_>) -> Option<Incoming> {
    let trace_id = b3_trace_id(s.x_b3_traceid?.as_bytes())?;
    let span_id = hex_into::<8>(s.x_b3_spanid?.as_bytes())?;
    if !valid(&trace_id, &span_id) {
        return None;
    }
    let debug = s.x_b3_flags.is_some_and(|v| v.as_bytes() == b"1");
    let sampled = if debug {
        Some(true)
    } else {
        s.x_b3_sampled.and_then(|v| b3_sampled(v.as_bytes()))
    };
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
        format: Format::B3Multi,
    })
}

/// The request headers tracing reads (each its first value), found in
/// one pass over the map: a lookup hashes the name, and the ten
/// lookups a decision needs cost more than walking a request's headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen<'a> {
    pub traceparent: Option<&'a HeaderValue>,
    pub tracestate: Option<&'a HeaderValue>,
    pub b3: Option<&'a HeaderValue>,
    pub x_b3_traceid: Option<&'a HeaderValue>,
    pub x_b3_spanid: Option<&'a HeaderValue>,
    pub x_b3_sampled: Option<&'a HeaderValue>,
    pub x_b3_flags: Option<&'a HeaderValue>,
    pub x_envoy_force_trace: bool,
    pub x_client_trace_id: bool,
    pub x_request_id: Option<&'a HeaderValue>,
}

/// Finds the headers of `Seen` in `h`. Names are told apart by their
/// length first (a request's usual headers, `host`, `user-agent`,
/// `accept`, have lengths no tracing header has, and leave after one
/// comparison).
pub fn scan(h: &HeaderMap) -> Seen<'_> {
    let mut s = Seen::default();
    for (name, value) in h {
        let n = name.as_str().as_bytes();
        let slot = match n.len() {
            2 if n == b"b3" => &mut s.b3,
            10 => match n {
                b"tracestate" => &mut s.tracestate,
                b"x-b3-flags" => &mut s.x_b3_flags,
                _ => continue,
            },
            11 => match n {
                b"traceparent" => &mut s.traceparent,
                b"x-b3-spanid" => &mut s.x_b3_spanid,
                _ => continue,
            },
            12 => match n {
                b"x-b3-traceid" => &mut s.x_b3_traceid,
                b"x-b3-sampled" => &mut s.x_b3_sampled,
                b"x-request-id" => &mut s.x_request_id,
                _ => continue,
            },
            17 if n == b"x-client-trace-id" => {
                s.x_client_trace_id = true;
                continue;
            }
            19 if n == b"x-envoy-force-trace" => {
                s.x_envoy_force_trace = true;
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    s
}

/// The incoming context: W3C first, then single `b3`, then multi-header
/// B3. An invalid header counts as absent (a new trace is started).
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    extract_seen(&scan(h))
}

/// `extract` from a `scan`.
pub fn extract_seen(s: &Seen<'_>) -> Option<Incoming> {
    if let Some(c) = s.traceparent.and_then(|v| parse_traceparent(v.as_bytes())) {
        return Some(c);
    }
    if let Some(c) = s.b3.and_then(|v| parse_b3_single(v.as_bytes())) {
        return Some(c);
    }
    b3_multi(s)
}

/// Removes B3 headers: the outgoing context is W3C only, and a stale B3
/// span id next to it would give the next hop two parents.
pub fn remove_b3(h: &mut HeaderMap) {
    for n in [
        B3,
        X_B3_TRACEID,
        X_B3_SPANID,
        X_B3_PARENTSPANID,
        X_B3_SAMPLED,
        X_B3_FLAGS,
    ] {
        h.remove(n);
    }
}

/// 8 bytes as 16 lowercase hex digits. Computed on a `u128` (SWAR: all
/// nibbles spread one per byte, then shifted into `0-9`/`a-f` at once)
/// instead of a table lookup per nibble: the lookups were about 190
/// instructions of each `traceparent` (benches/RESULTS.md).
fn hex8(bytes: [u8; 8]) -> [u8; 16] {
    let mut x = u128::from(u64::from_be_bytes(bytes));
    x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    // Each byte is one nibble, the first digit's in the top byte; a byte
    // over 9 gets `'a' - '0' - 10` more.
    let over9 = ((x + 0x0606_0606_0606_0606_0606_0606_0606_0606) >> 4)
        & 0x0101_0101_0101_0101_0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030_3030_3030_3030_3030 + over9 * 0x27).to_be_bytes()
}

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (o, b) in out.chunks_mut(16).zip(bytes.chunks(8)) {
        let mut word = [0u8; 8];
        word[..b.len()].copy_from_slice(b);
        let digits = hex8(word);
        o.copy_from_slice(&digits[..o.len()]);
    }
}

/// A version-00 `traceparent` value.
#[allow(unsafe_code)]
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let [
        t0,
        t1,
        t2,
        t3,
        t4,
        t5,
        t6,
        t7,
        t8,
        t9,
        t10,
        t11,
        t12,
        t13,
        t14,
        t15,
    ] = *trace_id;
    buf[3..19].copy_from_slice(&hex8([t0, t1, t2, t3, t4, t5, t6, t7]));
    buf[19..35].copy_from_slice(&hex8([t8, t9, t10, t11, t12, t13, t14, t15]));
    buf[36..52].copy_from_slice(&hex8(*span_id));
    if sampled {
        buf[54] = b'1';
    }
    // SAFETY: `buf` holds only ASCII hex digits and dashes, all bytes a
    // `HeaderValue` allows. Checking them again showed in the not-sampled
    // stream's instruction profile (benches/RESULTS.md).
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(&buf)) }
}

/// Lowercase hex of an id (span records, tests).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    put_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

thread_local! {
    /// The id generator's state, per thread (0: not seeded yet).
    static ID_STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// 64 random bits from a per-thread wyrand generator seeded once from
/// the OS-seeded `rand` generator. Trace and span ids need to be unique
/// and unpredictable enough to not collide (W3C Trace Context), not
/// cryptographic; `rand`'s ChaCha generator cost several times more per
/// stream and showed in the not-sampled path's instruction count.
pub(crate) fn random_u64() -> u64 {
    let [r] = random_words::<1>();
    r
}

/// `N` words of `random_u64` for one access to the thread's state (a
/// stream's trace and span ids take three).
pub(crate) fn random_words<const N: usize>() -> [u64; N] {
    ID_STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = rand::random::<u64>();
        }
        let mut out = [0u64; N];
        for o in &mut out {
            x = x.wrapping_add(0xa076_1d64_78bd_642f);
            let t = u128::from(x).wrapping_mul(u128::from(x ^ 0xe703_7ed1_a0b4_28db));
            *o = ((t >> 64) as u64) ^ (t as u64);
        }
        // A state that wraps to 0 is reseeded on the next call.
        s.set(x);
        out
    })
}

/// A random non-zero id.
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    loop {
        for chunk in id.chunks_mut(8) {
            let r = random_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// A new trace's id (non-zero; with `id64` its first 8 bytes are zero,
/// Zipkin's 64-bit ids) and a span id (non-zero), from one draw.
pub fn random_ids(id64: bool) -> ([u8; 16], [u8; 8]) {
    let [hi, lo, span] = random_words::<3>();
    let hi = if id64 { 0 } else { hi };
    let (mut trace_id, mut span_id) = ([0u8; 16], span.to_le_bytes());
    trace_id[..8].copy_from_slice(&hi.to_le_bytes());
    trace_id[8..].copy_from_slice(&lo.to_le_bytes());
    // All-zero ids are invalid; a draw of zero (about never) draws again.
    if hi == 0 && lo == 0 {
        trace_id = random_id::<16>();
        if id64 {
            trace_id[..8].fill(0);
            while trace_id[8..].iter().all(|b| *b == 0) {
                trace_id[8..].copy_from_slice(&random_id::<8>());
            }
        }
    }
    if span == 0 {
        span_id = random_id::<8>();
    }
    (trace_id, span_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The SWAR hex digits are the table's, for every byte in every
    /// position and for random words.
    #[test]
    fn hex8_matches_a_digit_table() {
        let table = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
        for v in 0..=255u8 {
            for pos in 0..8 {
                let mut w = [0x5au8; 8];
                w[pos] = v;
                assert_eq!(hex8(w).as_slice(), table(&w).as_bytes());
            }
        }
        for w in (0..1000).map(|_| random_u64().to_le_bytes()) {
            assert_eq!(hex8(w).as_slice(), table(&w).as_bytes());
        }
        assert_eq!(hex(&[0xab, 0x01, 0xff]), "ab01ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn random_ids_are_non_zero_and_id64_has_a_zero_top() {
        for _ in 0..100 {
            let (t, s) = random_ids(false);
            assert!(t.iter().any(|b| *b != 0) && s.iter().any(|b| *b != 0));
            let (t, _) = random_ids(true);
            assert!(t[..8].iter().all(|b| *b == 0) && t[8..].iter().any(|b| *b != 0));
        }
        assert_ne!(random_ids(false), random_ids(false));
    }

    #[test]
    fn w3c_round_trip() {
        let c = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.sampled, Some(true));
        assert_eq!(
            traceparent(&c.trace_id, &c.span_id, true).to_str().unwrap(),
            TP
        );
        let off = traceparent(&c.trace_id, &c.span_id, false);
        assert!(off.to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn w3c_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may append fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(
            parse_traceparent(later.as_bytes()).unwrap().sampled,
            Some(false)
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let c = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )
        .unwrap();
        assert_eq!(hex(&c.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(c.sampled, Some(true));
        let short = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(hex(&short.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(short.sampled, None);
        assert!(parse_b3_single(b"0").is_none());
        assert!(parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-x").is_none());

        let mut h = HeaderMap::new();
        h.insert(
            X_B3_TRACEID,
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        h.insert(X_B3_SPANID, HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert(X_B3_SAMPLED, HeaderValue::from_static("0"));
        let m = extract(&h).unwrap();
        assert_eq!(m.format, Format::B3Multi);
        assert_eq!(m.sampled, Some(false));
        h.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
        assert_eq!(extract(&h).unwrap().sampled, Some(true));
        remove_b3(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn ids_are_non_zero_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = random_id::<16>();
            let s = random_id::<8>();
            assert!(t.iter().any(|b| *b != 0) && s.iter().any(|b| *b != 0));
            assert!(seen.insert(t), "a repeated trace id");
        }
        // Other threads start from their own seed.
        let other = std::thread::spawn(random_id::<16>).join().unwrap();
        assert!(!seen.contains(&other));
    }

    #[test]
    fn scan_finds_first_values_as_get_does() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("a"));
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        h.append(TRACEPARENT, HeaderValue::from_static("second"));
        h.insert("x-envoy-force-trace", HeaderValue::from_static(""));
        h.insert("x-request-id", HeaderValue::from_static("id"));
        h.insert("x-b3-flags", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let s = scan(&h);
        assert_eq!(s.traceparent, h.get(TRACEPARENT));
        assert_eq!(s.x_request_id, h.get("x-request-id"));
        assert_eq!(s.x_b3_flags, h.get(X_B3_FLAGS));
        assert!(s.x_envoy_force_trace && !s.x_client_trace_id);
        assert!(s.b3.is_none() && s.x_b3_traceid.is_none());
        assert_eq!(extract(&h).unwrap().format, Format::W3c);
    }

    #[test]
    fn w3c_wins_over_b3() {
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            HeaderValue::from_static("64fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        assert_eq!(extract(&h).unwrap().format, Format::W3c);
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        assert_eq!(extract(&h).unwrap().format, Format::B3Single);
    }
}
