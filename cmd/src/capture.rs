//! `meshgate capture`: installs (or `--remove`s) the rules that send the
//! current network namespace's TCP traffic through meshgate, as Istio's
//! init container does: outbound connections REDIRECTed to
//! `--outbound-port` (15001), inbound ones to `--inbound-port` (15006) by
//! REDIRECT or TPROXY (with policy routing: `ip rule fwmark` + `ip route
//! local`). Loopback traffic and meshgate's own connections (its uid,
//! `--uid`, or a packet mark, `--mark`) are never captured.
//!
//! Everything installed lives in objects of its own, so `--remove` takes
//! exactly those away: the nftables table `inet meshgate`, or the iptables
//! chains `MESHGATE_*` and the jumps to them; under TPROXY, the `ip rule`
//! for `--tproxy-mark` and the routes of `--tproxy-table`.

use anyhow::{Context, bail};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The nftables table (family `inet`: IPv4 and IPv6).
const NFT_TABLE: &str = "meshgate";
/// The iptables chains.
const IPT_OUTPUT: &str = "MESHGATE_OUTPUT";
const IPT_INBOUND: &str = "MESHGATE_INBOUND";
const IPT_TPROXY: &str = "MESHGATE_TPROXY";
const IPT_DIVERT: &str = "MESHGATE_DIVERT";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Iptables,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// NAT REDIRECT; the listener reads the destination with SO_ORIGINAL_DST.
    Redirect,
    /// Inbound by TPROXY (the listener needs `transparent: true`); the
    /// source address of inbound connections is kept. Outbound stays REDIRECT.
    Tproxy,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Rule backend: nftables (preferred) or iptables (IPv4 only).
    #[arg(long, value_enum, default_value = "nft")]
    backend: Backend,
    /// How inbound connections are captured.
    #[arg(long, value_enum, default_value = "redirect")]
    mode: Mode,
    /// Where outbound connections go (the `use_original_dst` listener).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Where inbound connections go.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Connections of these uids are not captured (meshgate's own uid:
    /// run meshgate as a dedicated user). Comma-separated.
    #[arg(long, value_delimiter = ',')]
    uid: Vec<u32>,
    /// Packets with this mark are not captured.
    #[arg(long)]
    mark: Option<u32>,
    /// Inbound destination ports to capture, comma-separated, or `*` (all,
    /// the default); empty: no inbound capture.
    #[arg(long, default_value = "*")]
    inbound_ports: String,
    /// Outbound destination ports never captured. Comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Inbound destination ports never captured. Comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Only outbound connections to these CIDRs are captured (default:
    /// all). Comma-separated; `*` means all.
    #[arg(long, value_delimiter = ',')]
    include_outbound_cidrs: Vec<String>,
    /// Outbound connections to these CIDRs are never captured.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// No outbound capture.
    #[arg(long)]
    no_outbound: bool,
    /// TPROXY: the mark of diverted packets (routed by `--tproxy-table`).
    #[arg(long, default_value_t = 1337)]
    tproxy_mark: u32,
    /// TPROXY: the routing table that delivers marked packets locally.
    #[arg(long, default_value_t = 133)]
    tproxy_table: u32,
    /// Remove what `capture` installed (same --backend), and nothing else.
    #[arg(long)]
    remove: bool,
    /// Print the commands without running them.
    #[arg(long)]
    dry_run: bool,
}

/// One command of a plan, with its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl Step {
    fn new(program: &'static str, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: None,
        }
    }

    fn show(&self) -> String {
        let mut s = format!("{} {}", self.program, self.args.join(" "));
        if let Some(i) = &self.stdin {
            s.push_str(" <<'EOF'\n");
            s.push_str(i);
            s.push_str("EOF");
        }
        s
    }

    fn run(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.program);
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} (is it installed?)", self.program))?;
        if let (Some(text), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.show(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Whether a command succeeds (a probe: nothing printed).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Inbound ports: `None` for all, else the list (maybe empty: none).
fn inbound_ports(spec: &str) -> anyhow::Result<Option<Vec<u16>>> {
    let spec = spec.trim();
    if spec == "*" {
        return Ok(None);
    }
    let mut v = Vec::new();
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        v.push(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("--inbound-ports: '{p}' is not a port"))?,
        );
    }
    Ok(Some(v))
}

/// CIDRs split by family; `*` in an include list means all.
fn cidrs(flag: &str, list: &[String]) -> anyhow::Result<Option<(Vec<String>, Vec<String>)>> {
    if list.iter().any(|c| c.trim() == "*") {
        return Ok(None);
    }
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for c in list.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
        let net: ipnet::IpNet = c
            .parse()
            .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
            .with_context(|| format!("{flag}: '{c}' is not a CIDR"))?;
        let net = net.trunc().to_string();
        match net.contains(':') {
            false => v4.push(net),
            true => v6.push(net),
        }
    }
    Ok(Some((v4, v6)))
}

fn set<T: ToString>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(T::to_string).collect();
    format!("{{ {} }}", v.join(", "))
}

impl CaptureArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !self.no_outbound && self.uid.is_empty() && self.mark.is_none() {
            bail!(
                "--uid or --mark is required: meshgate's own outbound connections must not be captured again (or --no-outbound)"
            );
        }
        if self.outbound_port == 0 || self.inbound_port == 0 {
            bail!("--outbound-port and --inbound-port must be > 0");
        }
        if self.mode == Mode::Tproxy && (self.tproxy_mark == 0 || self.tproxy_table == 0) {
            bail!("--tproxy-mark and --tproxy-table must be > 0");
        }
        Ok(())
    }

    /// The nftables ruleset (one `nft -f -` transaction: all or nothing).
    pub fn nft_ruleset(&self) -> anyhow::Result<String> {
        let mut out = format!("table inet {NFT_TABLE} {{\n");
        if !self.no_outbound {
            out.push_str(
                "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n",
            );
            out.push_str("\t\toifname \"lo\" return\n");
            if !self.uid.is_empty() {
                out.push_str(&format!("\t\tmeta skuid {} return\n", set(&self.uid)));
            }
            if let Some(m) = self.mark {
                out.push_str(&format!("\t\tmeta mark {m:#x} return\n"));
            }
            if !self.exclude_outbound_ports.is_empty() {
                out.push_str(&format!(
                    "\t\ttcp dport {} return\n",
                    set(&self.exclude_outbound_ports)
                ));
            }
            if let Some((v4, v6)) = cidrs("--exclude-outbound-cidrs", &self.exclude_outbound_cidrs)?
            {
                if !v4.is_empty() {
                    out.push_str(&format!("\t\tip daddr {} return\n", set(&v4)));
                }
                if !v6.is_empty() {
                    out.push_str(&format!("\t\tip6 daddr {} return\n", set(&v6)));
                }
            }
            let redirect = format!("meta l4proto tcp redirect to :{}", self.outbound_port);
            match cidrs("--include-outbound-cidrs", &self.include_outbound_cidrs)? {
                Some((v4, v6)) if !(v4.is_empty() && v6.is_empty()) => {
                    if !v4.is_empty() {
                        out.push_str(&format!("\t\tip daddr {} {redirect}\n", set(&v4)));
                    }
                    if !v6.is_empty() {
                        out.push_str(&format!("\t\tip6 daddr {} {redirect}\n", set(&v6)));
                    }
                }
                _ => out.push_str(&format!("\t\t{redirect}\n")),
            }
            out.push_str("\t}\n");
        }
        let ports = inbound_ports(&self.inbound_ports)?;
        if ports.as_ref().is_none_or(|p| !p.is_empty()) {
            let only = match &ports {
                Some(p) => format!("tcp dport {} ", set(p)),
                None => "meta l4proto tcp ".to_string(),
            };
            match self.mode {
                Mode::Redirect => {
                    out.push_str(
                        "\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n",
                    );
                    if !self.exclude_inbound_ports.is_empty() {
                        out.push_str(&format!(
                            "\t\ttcp dport {} return\n",
                            set(&self.exclude_inbound_ports)
                        ));
                    }
                    out.push_str(&format!(
                        "\t\t{only}redirect to :{}\n\t}}\n",
                        self.inbound_port
                    ));
                }
                Mode::Tproxy => {
                    let mark = format!("{:#x}", self.tproxy_mark);
                    out.push_str("\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n");
                    // Packets of connections already accepted by a
                    // transparent socket: delivered locally by the mark.
                    out.push_str(&format!(
                        "\t\tmeta l4proto tcp socket transparent 1 meta mark set {mark} accept\n"
                    ));
                    out.push_str("\t\tiifname \"lo\" return\n");
                    if !self.exclude_inbound_ports.is_empty() {
                        out.push_str(&format!(
                            "\t\ttcp dport {} return\n",
                            set(&self.exclude_inbound_ports)
                        ));
                    }
                    for (proto, ip) in [("ipv4", "ip"), ("ipv6", "ip6")] {
                        out.push_str(&format!(
                            "\t\tmeta nfproto {proto} {only}tproxy {ip} to :{} meta mark set {mark} accept\n",
                            self.inbound_port
                        ));
                    }
                    out.push_str("\t}\n");
                }
            }
        }
        out.push_str("}\n");
        Ok(out)
    }

    /// The iptables commands (nat table; mangle for TPROXY).
    pub fn iptables_steps(&self) -> anyhow::Result<Vec<Step>> {
        let mut v = Vec::new();
        let ipt = |args: &[&str]| Step::new("iptables", args);
        if !self.no_outbound {
            let c = IPT_OUTPUT;
            v.push(ipt(&["-t", "nat", "-N", c]));
            v.push(ipt(&["-t", "nat", "-A", c, "-o", "lo", "-j", "RETURN"]));
            for u in &self.uid {
                v.push(ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    c,
                    "-m",
                    "owner",
                    "--uid-owner",
                    &u.to_string(),
                    "-j",
                    "RETURN",
                ]));
            }
            if let Some(m) = self.mark {
                v.push(ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    c,
                    "-m",
                    "mark",
                    "--mark",
                    &format!("{m:#x}"),
                    "-j",
                    "RETURN",
                ]));
            }
            for p in &self.exclude_outbound_ports {
                v.push(ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    c,
                    "-p",
                    "tcp",
                    "--dport",
                    &p.to_string(),
                    "-j",
                    "RETURN",
                ]));
            }
            if let Some((v4, v6)) = cidrs("--exclude-outbound-cidrs", &self.exclude_outbound_cidrs)?
            {
                if !v6.is_empty() {
                    bail!("--backend iptables is IPv4 only: use --backend nft for IPv6 CIDRs");
                }
                for n in v4 {
                    v.push(ipt(&["-t", "nat", "-A", c, "-d", &n, "-j", "RETURN"]));
                }
            }
            let port = self.outbound_port.to_string();
            match cidrs("--include-outbound-cidrs", &self.include_outbound_cidrs)? {
                Some((v4, v6)) if !(v4.is_empty() && v6.is_empty()) => {
                    if !v6.is_empty() {
                        bail!("--backend iptables is IPv4 only: use --backend nft for IPv6 CIDRs");
                    }
                    for n in v4 {
                        v.push(ipt(&[
                            "-t",
                            "nat",
                            "-A",
                            c,
                            "-p",
                            "tcp",
                            "-d",
                            &n,
                            "-j",
                            "REDIRECT",
                            "--to-ports",
                            &port,
                        ]));
                    }
                }
                _ => v.push(ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    c,
                    "-p",
                    "tcp",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ])),
            }
            v.push(ipt(&["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", c]));
        }
        let ports = inbound_ports(&self.inbound_ports)?;
        if ports.as_ref().is_none_or(|p| !p.is_empty()) {
            let port = self.inbound_port.to_string();
            let (table, c) = match self.mode {
                Mode::Redirect => ("nat", IPT_INBOUND),
                Mode::Tproxy => ("mangle", IPT_TPROXY),
            };
            v.push(ipt(&["-t", table, "-N", c]));
            if self.mode == Mode::Tproxy {
                v.push(ipt(&["-t", table, "-A", c, "-i", "lo", "-j", "RETURN"]));
            }
            for p in &self.exclude_inbound_ports {
                v.push(ipt(&[
                    "-t",
                    table,
                    "-A",
                    c,
                    "-p",
                    "tcp",
                    "--dport",
                    &p.to_string(),
                    "-j",
                    "RETURN",
                ]));
            }
            let mark = format!("{:#x}/0xffffffff", self.tproxy_mark);
            let target: Vec<&str> = match self.mode {
                Mode::Redirect => vec!["-j", "REDIRECT", "--to-ports", &port],
                Mode::Tproxy => vec!["-j", "TPROXY", "--on-port", &port, "--tproxy-mark", &mark],
            };
            let dports: Vec<Option<String>> = match &ports {
                None => vec![None],
                Some(p) => p.iter().map(|p| Some(p.to_string())).collect(),
            };
            for d in &dports {
                let mut a = vec!["-t", table, "-A", c, "-p", "tcp"];
                if let Some(d) = d {
                    a.extend(["--dport", d.as_str()]);
                }
                a.extend(&target);
                v.push(ipt(&a));
            }
            if self.mode == Mode::Tproxy {
                // Packets of connections a transparent socket accepted.
                let d = IPT_DIVERT;
                let m = format!("{:#x}", self.tproxy_mark);
                v.push(ipt(&["-t", "mangle", "-N", d]));
                v.push(ipt(&[
                    "-t",
                    "mangle",
                    "-A",
                    d,
                    "-j",
                    "MARK",
                    "--set-mark",
                    &m,
                ]));
                v.push(ipt(&["-t", "mangle", "-A", d, "-j", "ACCEPT"]));
                v.push(ipt(&[
                    "-t",
                    "mangle",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-m",
                    "socket",
                    "--transparent",
                    "-j",
                    d,
                ]));
            }
            v.push(ipt(&[
                "-t",
                table,
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                c,
            ]));
        }
        Ok(v)
    }

    /// `ip rule` + `ip route local` of TPROXY (IPv4 and IPv6).
    fn routing_steps(&self) -> Vec<Step> {
        if self.mode != Mode::Tproxy {
            return Vec::new();
        }
        let (m, t) = (self.tproxy_mark.to_string(), self.tproxy_table.to_string());
        vec![
            Step::new("ip", &["-4", "rule", "add", "fwmark", &m, "lookup", &t]),
            Step::new(
                "ip",
                &[
                    "-4",
                    "route",
                    "add",
                    "local",
                    "0.0.0.0/0",
                    "dev",
                    "lo",
                    "table",
                    &t,
                ],
            ),
            Step::new("ip", &["-6", "rule", "add", "fwmark", &m, "lookup", &t]),
            Step::new(
                "ip",
                &[
                    "-6", "route", "add", "local", "::/0", "dev", "lo", "table", &t,
                ],
            ),
        ]
    }

    /// What `--remove` runs: only what exists of what `capture` installs.
    fn removal_steps(&self, probe: bool) -> Vec<Step> {
        let mut v = Vec::new();
        match self.backend {
            Backend::Nft => {
                if !probe || succeeds("nft", &["list", "table", "inet", NFT_TABLE]) {
                    v.push(Step::new("nft", &["delete", "table", "inet", NFT_TABLE]));
                }
            }
            Backend::Iptables => {
                for (table, parent, chain) in [
                    ("nat", "OUTPUT", IPT_OUTPUT),
                    ("nat", "PREROUTING", IPT_INBOUND),
                    ("mangle", "PREROUTING", IPT_TPROXY),
                ] {
                    let jump = ["-t", table, "-C", parent, "-p", "tcp", "-j", chain];
                    if !probe || succeeds("iptables", &jump) {
                        v.push(Step::new(
                            "iptables",
                            &["-t", table, "-D", parent, "-p", "tcp", "-j", chain],
                        ));
                    }
                    if !probe || succeeds("iptables", &["-t", table, "-n", "-L", chain]) {
                        v.push(Step::new("iptables", &["-t", table, "-F", chain]));
                        v.push(Step::new("iptables", &["-t", table, "-X", chain]));
                    }
                }
                let divert = [
                    "-t",
                    "mangle",
                    "-C",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-m",
                    "socket",
                    "--transparent",
                    "-j",
                    IPT_DIVERT,
                ];
                if !probe || succeeds("iptables", &divert) {
                    let mut d: Vec<&str> = divert.to_vec();
                    d[2] = "-D";
                    v.push(Step::new("iptables", &d));
                }
                if !probe || succeeds("iptables", &["-t", "mangle", "-n", "-L", IPT_DIVERT]) {
                    v.push(Step::new("iptables", &["-t", "mangle", "-F", IPT_DIVERT]));
                    v.push(Step::new("iptables", &["-t", "mangle", "-X", IPT_DIVERT]));
                }
            }
        }
        let (m, t) = (self.tproxy_mark.to_string(), self.tproxy_table.to_string());
        for fam in ["-4", "-6"] {
            let rule_there = || {
                Command::new("ip")
                    .args([fam, "rule", "show", "fwmark", &m, "lookup", &t])
                    .output()
                    .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
            };
            if !probe || rule_there() {
                v.push(Step::new(
                    "ip",
                    &[fam, "rule", "del", "fwmark", &m, "lookup", &t],
                ));
            }
            let route_there = || {
                Command::new("ip")
                    .args([fam, "route", "show", "table", &t])
                    .output()
                    .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
            };
            if !probe || route_there() {
                v.push(Step::new("ip", &[fam, "route", "flush", "table", &t]));
            }
        }
        v
    }

    /// The commands that install the capture.
    fn install_steps(&self) -> anyhow::Result<Vec<Step>> {
        let mut v = match self.backend {
            Backend::Nft => vec![Step {
                program: "nft",
                args: vec!["-f".into(), "-".into()],
                stdin: Some(self.nft_ruleset()?),
            }],
            Backend::Iptables => self.iptables_steps()?,
        };
        v.extend(self.routing_steps());
        Ok(v)
    }

    fn installed(&self) -> bool {
        match self.backend {
            Backend::Nft => succeeds("nft", &["list", "table", "inet", NFT_TABLE]),
            Backend::Iptables => [
                ("nat", IPT_OUTPUT),
                ("nat", IPT_INBOUND),
                ("mangle", IPT_TPROXY),
            ]
            .iter()
            .any(|(t, c)| succeeds("iptables", &["-t", t, "-n", "-L", c])),
        }
    }
}

/// Runs `meshgate capture`.
pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    if args.remove {
        let steps = args.removal_steps(!args.dry_run);
        if steps.is_empty() {
            println!("# meshgate capture: nothing installed");
        }
        for s in &steps {
            println!("{}", s.show());
            if !args.dry_run {
                s.run()?;
            }
        }
        return Ok(());
    }
    args.check()?;
    let steps = args.install_steps()?;
    if !args.dry_run && args.installed() {
        bail!("capture rules are installed already: `meshgate capture --remove` first");
    }
    for (i, s) in steps.iter().enumerate() {
        println!("{}", s.show());
        if args.dry_run {
            continue;
        }
        if let Err(e) = s.run() {
            // Leave nothing half-installed.
            for r in args.removal_steps(true) {
                let _ = r.run();
            }
            return Err(e.context(format!(
                "step {} of {}; what was installed is removed",
                i + 1,
                steps.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: CaptureArgs,
    }

    fn args(v: &[&str]) -> CaptureArgs {
        let mut all = vec!["t"];
        all.extend(v);
        T::parse_from(all).a
    }

    #[test]
    fn nft_redirect_ruleset() {
        let a = args(&[
            "--uid",
            "1337",
            "--exclude-outbound-ports",
            "22,53",
            "--exclude-outbound-cidrs",
            "10.1.0.0/16,fd00::/8",
            "--exclude-inbound-ports",
            "15090",
        ]);
        let r = a.nft_ruleset().unwrap();
        assert!(r.contains("oifname \"lo\" return"), "{r}");
        assert!(r.contains("meta skuid { 1337 } return"), "{r}");
        assert!(r.contains("tcp dport { 22, 53 } return"), "{r}");
        assert!(r.contains("ip daddr { 10.1.0.0/16 } return"), "{r}");
        assert!(r.contains("ip6 daddr { fd00::/8 } return"), "{r}");
        assert!(
            r.contains("\t\tmeta l4proto tcp redirect to :15001\n"),
            "{r}"
        );
        assert!(r.contains("tcp dport { 15090 } return"), "{r}");
        assert!(r.contains("meta l4proto tcp redirect to :15006"), "{r}");
    }

    #[test]
    fn nft_include_cidrs_and_inbound_ports() {
        let a = args(&[
            "--mark",
            "7",
            "--include-outbound-cidrs",
            "10.96.0.0/12",
            "--inbound-ports",
            "8080,9090",
        ]);
        let r = a.nft_ruleset().unwrap();
        assert!(r.contains("meta mark 0x7 return"), "{r}");
        assert!(
            r.contains("ip daddr { 10.96.0.0/12 } meta l4proto tcp redirect to :15001"),
            "{r}"
        );
        assert!(
            r.contains("tcp dport { 8080, 9090 } redirect to :15006"),
            "{r}"
        );
        let none = args(&["--uid", "1", "--inbound-ports", ""])
            .nft_ruleset()
            .unwrap();
        assert!(!none.contains("prerouting"), "{none}");
    }

    #[test]
    fn nft_tproxy_ruleset_and_routes() {
        let a = args(&["--uid", "1337", "--mode", "tproxy"]);
        let r = a.nft_ruleset().unwrap();
        assert!(r.contains("priority mangle"), "{r}");
        assert!(
            r.contains("socket transparent 1 meta mark set 0x539 accept"),
            "{r}"
        );
        assert!(
            r.contains(
                "meta nfproto ipv4 meta l4proto tcp tproxy ip to :15006 meta mark set 0x539 accept"
            ),
            "{r}"
        );
        let routes: Vec<String> = a.routing_steps().iter().map(Step::show).collect();
        assert!(
            routes.contains(&"ip -4 rule add fwmark 1337 lookup 133".to_string()),
            "{routes:?}"
        );
    }

    #[test]
    fn refuses_without_an_exemption_and_bad_values() {
        assert!(args(&[]).check().is_err());
        assert!(args(&["--no-outbound"]).check().is_ok());
        assert!(
            args(&["--uid", "1", "--exclude-outbound-cidrs", "10.0.0.0/33"])
                .nft_ruleset()
                .is_err()
        );
        assert!(
            args(&["--uid", "1", "--inbound-ports", "80,x"])
                .nft_ruleset()
                .is_err()
        );
        assert!(
            args(&[
                "--uid",
                "1",
                "--backend",
                "iptables",
                "--include-outbound-cidrs",
                "fd00::/8"
            ])
            .iptables_steps()
            .is_err()
        );
    }

    #[test]
    fn iptables_redirect_steps() {
        let a = args(&[
            "--backend",
            "iptables",
            "--uid",
            "1337",
            "--exclude-inbound-ports",
            "22",
        ]);
        let s: Vec<String> = a.iptables_steps().unwrap().iter().map(Step::show).collect();
        assert!(
            s.contains(
                &"iptables -t nat -A MESHGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN"
                    .to_string()
            ),
            "{s:?}"
        );
        assert!(
            s.contains(
                &"iptables -t nat -A MESHGATE_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
                    .to_string()
            ),
            "{s:?}"
        );
        assert!(
            s.contains(
                &"iptables -t nat -A MESHGATE_INBOUND -p tcp --dport 22 -j RETURN".to_string()
            ),
            "{s:?}"
        );
        assert_eq!(
            s.last().unwrap(),
            "iptables -t nat -A PREROUTING -p tcp -j MESHGATE_INBOUND"
        );
    }
}
