//! Virtual host selection by domain, without allocation: the request host
//! is compared case-insensitively against lowercase keys kept in sorted
//! vectors (binary search). Wildcard keys are grouped by length, longest
//! first, so the longest matching wildcard wins with one binary search per
//! distinct length.

use std::cmp::Ordering;

/// Where a domain goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DomainKind<'a> {
    /// `*`
    Default,
    Exact(&'a str),
    /// `*.example.com`: the key is `.example.com`.
    Suffix(&'a str),
    /// `api.*`: the key is `api.`.
    Prefix(&'a str),
}

/// Classifies a lowercase domain, or says why it is invalid.
pub(crate) fn classify(domain: &str) -> Result<DomainKind<'_>, &'static str> {
    if domain.is_empty() {
        return Err("must not be empty");
    }
    if domain
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err("invalid domain: must not contain whitespace, control characters or '/'");
    }
    if domain == "*" {
        return Ok(DomainKind::Default);
    }
    match domain.matches('*').count() {
        0 => Ok(DomainKind::Exact(domain)),
        1 if domain.starts_with('*') => Ok(DomainKind::Suffix(&domain[1..])),
        1 if domain.ends_with('*') => Ok(DomainKind::Prefix(&domain[..domain.len() - 1])),
        _ => Err("invalid domain: one wildcard '*' at most, as the first or last character"),
    }
}

/// One step of the domain search.
type Tier = fn(&DomainIndex, &[u8]) -> Option<usize>;

#[derive(Debug, Default)]
struct LenGroup {
    len: usize,
    keys: Vec<(Box<[u8]>, usize)>,
}

/// What the port of the request host does in the domain search
/// (`RouteConfig::ignore_port_in_host_matching`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostPort {
    /// Unset (meshgate YAML): at each step the host as sent, then without
    /// its port.
    #[default]
    Either,
    /// `false` (Envoy's default): the host as sent only, so `a.com:8080`
    /// matches `a.com:8080`, `a.com*` or `*`, never `a.com`.
    Kept,
    /// `true`: the port is stripped first and only the bare host is
    /// matched (Envoy's `ignore_port_in_host_matching`).
    Ignored,
}

/// Domains of every virtual host of a table.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    exact: Vec<(Box<[u8]>, usize)>,
    suffixes: Vec<LenGroup>,
    prefixes: Vec<LenGroup>,
    default: Option<usize>,
    port: HostPort,
}

/// Compares a lowercase key with a host of any case.
fn cmp_ci(key: &[u8], host: &[u8]) -> Ordering {
    for (k, h) in key.iter().zip(host) {
        match k.cmp(&h.to_ascii_lowercase()) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    key.len().cmp(&host.len())
}

fn find(keys: &[(Box<[u8]>, usize)], host: &[u8]) -> Option<usize> {
    keys.binary_search_by(|(k, _)| cmp_ci(k, host))
        .ok()
        .map(|i| keys[i].1)
}

fn add_grouped(groups: &mut Vec<LenGroup>, key: &str, vhost: usize) {
    let len = key.len();
    let pos = match groups.binary_search_by(|g| len.cmp(&g.len)) {
        Ok(p) => p,
        Err(p) => {
            groups.insert(
                p,
                LenGroup {
                    len,
                    keys: Vec::new(),
                },
            );
            p
        }
    };
    groups[pos].keys.push((key.as_bytes().into(), vhost));
}

impl DomainIndex {
    /// Adds a classified, lowercase, not yet present domain.
    pub(crate) fn add(&mut self, kind: DomainKind<'_>, vhost: usize) {
        match kind {
            DomainKind::Default => self.default = Some(vhost),
            DomainKind::Exact(d) => self.exact.push((d.as_bytes().into(), vhost)),
            DomainKind::Suffix(s) => add_grouped(&mut self.suffixes, s, vhost),
            DomainKind::Prefix(p) => add_grouped(&mut self.prefixes, p, vhost),
        }
    }

    /// Sorts the keys and sets how the host's port is treated; call once
    /// after the last `add`.
    pub(crate) fn finish(&mut self, port: HostPort) {
        self.port = port;
        self.exact.sort_by(|a, b| a.0.cmp(&b.0));
        for g in self.suffixes.iter_mut().chain(self.prefixes.iter_mut()) {
            g.keys.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }

    fn lookup_exact(&self, host: &[u8]) -> Option<usize> {
        find(&self.exact, host)
    }

    /// The longest wildcard; a wildcard stands for at least one character.
    fn lookup_suffix(&self, host: &[u8]) -> Option<usize> {
        self.suffixes.iter().find_map(|g| {
            (host.len() > g.len)
                .then(|| find(&g.keys, &host[host.len() - g.len..]))
                .flatten()
        })
    }

    fn lookup_prefix(&self, host: &[u8]) -> Option<usize> {
        self.prefixes.iter().find_map(|g| {
            (host.len() > g.len)
                .then(|| find(&g.keys, &host[..g.len]))
                .flatten()
        })
    }

    /// The virtual host serving `host`: an exact domain, then the longest
    /// suffix wildcard, then the longest prefix wildcard, then `*`. At each
    /// step the host is tried as given (port included), then without its
    /// port, as [`HostPort`] says.
    pub(crate) fn lookup(&self, host: &[u8]) -> Option<usize> {
        let (host, stripped) = match self.port {
            HostPort::Either => (host, strip_port(host)),
            HostPort::Kept => (host, None),
            HostPort::Ignored => (strip_port(host).unwrap_or(host), None),
        };
        let tiers: [Tier; 3] = [Self::lookup_exact, Self::lookup_suffix, Self::lookup_prefix];
        for tier in tiers {
            if let Some(v) = tier(self, host) {
                return Some(v);
            }
            if let Some(h) = stripped
                && let Some(v) = tier(self, h)
            {
                return Some(v);
            }
        }
        self.default
    }
}

/// `host:port` -> `host`, `[v6]:port` -> `[v6]`; `None` without a port.
pub fn strip_port(host: &[u8]) -> Option<&[u8]> {
    let colon = if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']')?;
        if host.get(end + 1) != Some(&b':') {
            return None;
        }
        end + 1
    } else {
        let i = host.iter().rposition(|&b| b == b':')?;
        if host[..i].contains(&b':') {
            return None;
        }
        i
    };
    let port = &host[colon + 1..];
    (!port.is_empty() && port.iter().all(u8::is_ascii_digit)).then_some(&host[..colon])
}
