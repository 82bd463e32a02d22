//! The egress decision, as pure functions: may a sandbox reach this host name, this address?
//!
//! Some destinations are refused in every mode: cloud metadata services (by address and by
//! name), the host's loopback, link-local, unspecified, multicast, broadcast and reserved
//! addresses. Private ranges are refused when [`Rules::block_private`] is set. Beyond that,
//! [`Mode::Allowlist`] lets through only names an allow pattern matches and [`Mode::Full`]
//! everything not denied by a deny pattern.
//!
//! A host written as an IP address in any form a C library or URL parser would accept
//! (`2852039166`, `0xA9FEA9FE`, `0251.0376.0251.0376`, `169.254.43518`, `[::ffff:a9fe:a9fe]`)
//! is checked as that address, and IPv6 addresses that embed an IPv4 one (mapped, compatible,
//! NAT64, 6to4) are checked as the embedded address.

use agentkernel_core::egress::host_matches;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How a sandbox's egress is limited beyond the addresses that are always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only names an allow pattern matches; connections without a name are refused.
    Allowlist,
    /// Everything not refused by a deny pattern or an address rule.
    Full,
}

/// A sandbox's egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Allowlist or full.
    pub mode: Mode,
    /// Host patterns (`api.example.com`, `*.example.com`) allowed in [`Mode::Allowlist`].
    pub allow: Vec<String>,
    /// Host patterns refused in every mode (checked before `allow`).
    pub deny: Vec<String>,
    /// Refuse private addresses (RFC 1918, shared address space, unique-local IPv6) too.
    pub block_private: bool,
    /// Refuse addresses of the proxy's own host (its interfaces' addresses reach the host's
    /// services as its loopback does). Always on for sandboxes; off only in tests whose
    /// upstream servers live in the proxy's own namespace.
    pub refuse_host_addresses: bool,
}

/// What kind of address an IP is, as far as egress is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// A cloud metadata service (169.254.169.254, 100.100.100.200, fd00:ec2::254).
    Metadata,
    /// 127.0.0.0/8 or ::1: the host itself.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8 or ::.
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, or an IPv6 range whose target cannot be told (local-use NAT64).
    Reserved,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7.
    Private,
    /// Anything else.
    Public,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A cloud metadata address or name.
    Metadata,
    /// The host's loopback (an address or `localhost`).
    Loopback,
    /// A link-local address.
    LinkLocal,
    /// An unspecified address.
    Unspecified,
    /// A multicast or broadcast address.
    Multicast,
    /// A reserved address.
    Reserved,
    /// A private address while `block_private` is set.
    Private,
    /// An address of the proxy's own host.
    HostAddress,
    /// Allowlist mode and no allow pattern matches.
    NotAllowlisted,
    /// A deny pattern matches (the pattern).
    DeniedByPattern(String),
    /// Not a host name at all.
    BadName,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Metadata => f.write_str("cloud metadata address"),
            Reason::Loopback => f.write_str("the host's loopback"),
            Reason::LinkLocal => f.write_str("link-local address"),
            Reason::Unspecified => f.write_str("unspecified address"),
            Reason::Multicast => f.write_str("multicast or broadcast address"),
            Reason::Reserved => f.write_str("reserved address"),
            Reason::Private => f.write_str("private address (block_private)"),
            Reason::HostAddress => f.write_str("an address of the host itself"),
            Reason::NotAllowlisted => f.write_str("not in the sandbox's allowlist"),
            Reason::DeniedByPattern(p) => write!(f, "denied by pattern {p}"),
            Reason::BadName => f.write_str("not a host name"),
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The destination may be reached.
    Allow,
    /// It may not, and why.
    Deny(Reason),
}

impl Verdict {
    /// Whether this is [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// Names of cloud metadata services, refused in every mode.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// fd00:ec2::254, the IPv6 address of the EC2 instance metadata service.
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// What kind of address `ip` is; IPv6 addresses embedding an IPv4 one are classified by it.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, _, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        AddrClass::Metadata
    } else if a == 0 {
        AddrClass::Unspecified
    } else if a == 127 {
        AddrClass::Loopback
    } else if a == 169 && b == 254 {
        AddrClass::LinkLocal
    } else if ip == Ipv4Addr::BROADCAST {
        AddrClass::Broadcast
    } else if (224..240).contains(&a) {
        AddrClass::Multicast
    } else if a >= 240 {
        AddrClass::Reserved
    } else if a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b))
    {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address an IPv6 one stands for: mapped (::ffff:0:0/96), compatible (::/96, but
/// not :: and ::1), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || compatible || nat64 {
        Some(last32)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip == EC2_METADATA_V6 {
        AddrClass::Metadata
    } else if ip == Ipv6Addr::UNSPECIFIED {
        AddrClass::Unspecified
    } else if ip == Ipv6Addr::LOCALHOST {
        AddrClass::Loopback
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Local-use NAT64 (64:ff9b:1::/48): the IPv4 address sits where the prefix length
        // chosen by the local operator puts it, so it cannot be checked.
        AddrClass::Reserved
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// `host` as an IP address, if a C library (`inet_aton`) or URL parser would take it as one:
/// dotted decimal, a single integer, hexadecimal (`0x`) and octal (leading `0`) parts, short
/// forms (`127.1`, `169.254.43518`), IPv6 with or without brackets, a trailing dot.
pub fn parse_host_literal(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6);
    }
    if host.contains(':') {
        return host.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_inet_aton(host).map(IpAddr::V4)
}

/// One part of an `inet_aton` address: `0x` hexadecimal, leading-`0` octal or decimal.
fn parse_aton_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 for URL parsers; "" is not a number.
        return (radix == 16).then_some(0);
    }
    let mut value: u64 = 0;
    for c in digits.chars() {
        let d = u64::from(c.to_digit(radix)?);
        value = value.checked_mul(u64::from(radix))?.checked_add(d)?;
        if value > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(value)
}

fn parse_inet_aton(host: &str) -> Option<Ipv4Addr> {
    if host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let values = parts
        .iter()
        .map(|p| parse_aton_part(p))
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if last_bits < 32 && *last >= 1u64 << last_bits {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, &v) in leading.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    addr |= last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

/// `host` lowercased, without a trailing dot and without IPv6 brackets.
fn normalize(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

impl Rules {
    /// May the sandbox reach the host called `host` (a name or an address in any form)?
    ///
    /// An address is checked as one ([`Rules::addr_verdict`]) and then, written in its
    /// canonical form, against the patterns like a name: a raw IP passes an allowlist only if
    /// it is listed.
    pub fn name_verdict(&self, host: &str) -> Verdict {
        let name = normalize(host);
        let name = match parse_host_literal(&name) {
            Some(ip) => {
                if let Verdict::Deny(r) = self.addr_verdict(ip) {
                    return Verdict::Deny(r);
                }
                ip.to_string()
            }
            None => {
                if name.is_empty() || name.len() > 253 || name.contains(['/', ' ', '[', ']']) {
                    return Verdict::Deny(Reason::BadName);
                }
                if METADATA_NAMES.contains(&name.as_str()) {
                    return Verdict::Deny(Reason::Metadata);
                }
                if name == "localhost" || name.ends_with(".localhost") {
                    return Verdict::Deny(Reason::Loopback);
                }
                name
            }
        };
        if let Some(p) = self.deny.iter().find(|p| host_matches(p, &name)) {
            return Verdict::Deny(Reason::DeniedByPattern(p.clone()));
        }
        match self.mode {
            Mode::Full => Verdict::Allow,
            Mode::Allowlist if self.allow.iter().any(|p| host_matches(p, &name)) => Verdict::Allow,
            Mode::Allowlist => Verdict::Deny(Reason::NotAllowlisted),
        }
    }

    /// May the sandbox connect to `ip` (whatever name led there)?
    pub fn addr_verdict(&self, ip: IpAddr) -> Verdict {
        let verdict = self.class_verdict(ip);
        if verdict.is_allow() && self.refuse_host_addresses && is_host_address(ip) {
            return Verdict::Deny(Reason::HostAddress);
        }
        verdict
    }

    fn class_verdict(&self, ip: IpAddr) -> Verdict {
        match classify(ip) {
            AddrClass::Public => Verdict::Allow,
            AddrClass::Private if !self.block_private => Verdict::Allow,
            AddrClass::Private => Verdict::Deny(Reason::Private),
            AddrClass::Metadata => Verdict::Deny(Reason::Metadata),
            AddrClass::Loopback => Verdict::Deny(Reason::Loopback),
            AddrClass::LinkLocal => Verdict::Deny(Reason::LinkLocal),
            AddrClass::Unspecified => Verdict::Deny(Reason::Unspecified),
            AddrClass::Multicast | AddrClass::Broadcast => Verdict::Deny(Reason::Multicast),
            AddrClass::Reserved => Verdict::Deny(Reason::Reserved),
        }
    }
}

/// Whether `ip` is one of this host's own addresses: the kernel picks it as the source of a
/// route to itself. A UDP `connect` sends nothing; it only asks the routing table.
pub fn is_host_address(ip: IpAddr) -> bool {
    let unspecified: IpAddr = match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(sock) = std::net::UdpSocket::bind((unspecified, 0)) else {
        return false;
    };
    sock.connect((ip, 9)).is_ok() && sock.local_addr().is_ok_and(|a| a.ip() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test input")
    }

    fn rules(mode: Mode, allow: &[&str], deny: &[&str], block_private: bool) -> Rules {
        Rules {
            refuse_host_addresses: false,
            mode,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            block_private,
        }
    }

    #[test]
    fn literals_parse_in_every_form_inet_aton_takes() {
        let md = ip("169.254.169.254");
        for form in [
            "169.254.169.254",
            "169.254.169.254.",
            "2852039166",
            "0xA9FEA9FE",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0xA9.0xFE.0xA9.0xFE",
            "0251.254.0xa9.254",
            "169.16689662",
            "[::ffff:169.254.169.254]",
        ] {
            let want = if form.starts_with('[') {
                IpAddr::V6(Ipv4Addr::new(169, 254, 169, 254).to_ipv6_mapped())
            } else {
                md
            };
            assert_eq!(parse_host_literal(form), Some(want), "{form}");
        }
        assert_eq!(parse_host_literal("127.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_host_literal("0"), Some(ip("0.0.0.0")));
        assert_eq!(parse_host_literal("::1"), Some(ip("::1")));
        assert_eq!(parse_host_literal("[::1]"), Some(ip("::1")));
        assert_eq!(
            parse_host_literal("[fd00:ec2::254]."),
            Some(ip("fd00:ec2::254"))
        );
        for not_ip in [
            "",
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "1.2.65536",
            "4294967296",
            "08.1.1.1",
            "0xg1",
            "1..1",
            "[::1",
            "[example.com]",
            "1.2.3.4x",
        ] {
            assert_eq!(parse_host_literal(not_ip), None, "{not_ip}");
        }
    }

    #[test]
    fn addresses_are_classified() {
        for (s, class) in [
            ("169.254.169.254", AddrClass::Metadata),
            ("100.100.100.200", AddrClass::Metadata),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("febf::1", AddrClass::LinkLocal),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("::1", AddrClass::Loopback),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("::", AddrClass::Unspecified),
            ("224.0.0.1", AddrClass::Multicast),
            ("ff02::1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("240.0.0.1", AddrClass::Reserved),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("100.128.0.1", AddrClass::Public),
            ("fc00::1", AddrClass::Private),
            ("fd12:3456::1", AddrClass::Private),
            ("8.8.8.8", AddrClass::Public),
            ("2606:4700::1111", AddrClass::Public),
            // IPv6 forms embedding IPv4 are classified by the IPv4 address.
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.0.0.1", AddrClass::Private),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::169.254.169.254", AddrClass::Metadata),
            ("::127.0.0.1", AddrClass::Loopback),
            ("64:ff9b::169.254.169.254", AddrClass::Metadata),
            ("64:ff9b::7f00:1", AddrClass::Loopback),
            ("64:ff9b::808:808", AddrClass::Public),
            ("64:ff9b:1::1", AddrClass::Reserved),
            ("2002:a9fe:a9fe::1", AddrClass::Metadata),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2002:0a00:0001::1", AddrClass::Private),
            ("2002:0808:0808::1", AddrClass::Public),
        ] {
            assert_eq!(classify(ip(s)), class, "{s}");
        }
    }

    #[test]
    fn always_denied_addresses_are_denied_in_every_mode() {
        for mode in [Mode::Allowlist, Mode::Full] {
            let r = rules(mode, &["*"], &[], false);
            for s in [
                "169.254.169.254",
                "100.100.100.200",
                "fd00:ec2::254",
                "169.254.3.4",
                "fe80::1",
                "127.0.0.1",
                "::1",
                "0.0.0.0",
                "::",
                "239.1.1.1",
                "ff02::1",
                "255.255.255.255",
                "::ffff:127.0.0.1",
                "64:ff9b::a9fe:a9fe",
            ] {
                assert!(!r.addr_verdict(ip(s)).is_allow(), "{s} in {mode:?}");
            }
            assert_eq!(
                r.addr_verdict(ip("169.254.169.254")),
                Verdict::Deny(Reason::Metadata)
            );
            assert_eq!(
                r.addr_verdict(ip("127.0.0.2")),
                Verdict::Deny(Reason::Loopback)
            );
            assert!(r.addr_verdict(ip("10.0.0.1")).is_allow());
            assert!(r.addr_verdict(ip("1.1.1.1")).is_allow());
        }
    }

    #[test]
    fn private_addresses_are_denied_only_with_block_private() {
        let open = rules(Mode::Full, &[], &[], false);
        let closed = rules(Mode::Full, &[], &[], true);
        for s in [
            "10.0.0.1",
            "172.20.1.1",
            "192.168.0.1",
            "100.64.1.1",
            "fd00::1",
        ] {
            assert!(open.addr_verdict(ip(s)).is_allow(), "{s}");
            assert_eq!(
                closed.addr_verdict(ip(s)),
                Verdict::Deny(Reason::Private),
                "{s}"
            );
        }
        assert!(closed.addr_verdict(ip("8.8.8.8")).is_allow());
        assert!(!closed.name_verdict("0x0a000001").is_allow());
    }

    #[test]
    fn names_that_are_addresses_are_checked_as_addresses() {
        let r = rules(Mode::Full, &[], &[], false);
        for host in [
            "169.254.169.254",
            "2852039166",
            "0xA9FEA9FE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[64:ff9b::169.254.169.254]",
            "169.254.169.254.",
        ] {
            assert_eq!(
                r.name_verdict(host),
                Verdict::Deny(Reason::Metadata),
                "{host}"
            );
        }
        for host in ["127.1", "0x7f000001", "2130706433", "[::1]", "017700000001"] {
            assert_eq!(
                r.name_verdict(host),
                Verdict::Deny(Reason::Loopback),
                "{host}"
            );
        }
        assert!(r.name_verdict("8.8.8.8").is_allow());
        // In an allowlist a raw address passes only if it is listed itself.
        let a = rules(Mode::Allowlist, &["example.com", "8.8.4.4"], &[], false);
        assert_eq!(
            a.name_verdict("8.8.8.8"),
            Verdict::Deny(Reason::NotAllowlisted)
        );
        assert!(a.name_verdict("8.8.4.4").is_allow());
        assert!(a.name_verdict("0x08080404").is_allow());
    }

    #[test]
    fn metadata_and_localhost_names_are_denied_in_every_mode() {
        for mode in [Mode::Allowlist, Mode::Full] {
            let r = rules(
                mode,
                &[
                    "metadata.google.internal",
                    "localhost",
                    "*.localhost",
                    "metadata",
                ],
                &[],
                false,
            );
            for host in [
                "metadata.google.internal",
                "METADATA.Google.Internal",
                "metadata.google.internal.",
                "metadata.goog",
                "metadata",
                "Metadata.",
                "instance-data",
                "instance-data.ec2.internal",
            ] {
                assert_eq!(
                    r.name_verdict(host),
                    Verdict::Deny(Reason::Metadata),
                    "{host}"
                );
            }
            for host in ["localhost", "LOCALHOST.", "foo.localhost", "a.b.LocalHost"] {
                assert_eq!(
                    r.name_verdict(host),
                    Verdict::Deny(Reason::Loopback),
                    "{host}"
                );
            }
        }
    }

    #[test]
    fn allowlist_and_deny_patterns() {
        let r = rules(
            Mode::Allowlist,
            &["api.example.com", "*.pypi.org"],
            &["evil.pypi.org"],
            false,
        );
        assert!(r.name_verdict("api.example.com").is_allow());
        assert!(r.name_verdict("API.Example.COM.").is_allow());
        assert!(r.name_verdict("files.pypi.org").is_allow());
        assert_eq!(
            r.name_verdict("pypi.org"),
            Verdict::Deny(Reason::NotAllowlisted)
        );
        assert_eq!(
            r.name_verdict("example.com"),
            Verdict::Deny(Reason::NotAllowlisted)
        );
        assert_eq!(
            r.name_verdict("EVIL.pypi.org"),
            Verdict::Deny(Reason::DeniedByPattern("evil.pypi.org".into()))
        );
        assert_eq!(r.name_verdict(""), Verdict::Deny(Reason::BadName));
        let full = rules(Mode::Full, &[], &["*.x.com"], false);
        assert!(full.name_verdict("anything.example").is_allow());
        assert!(full.name_verdict("x.com").is_allow());
        let denied = full.name_verdict("a.x.com.");
        assert_eq!(
            denied,
            Verdict::Deny(Reason::DeniedByPattern("*.x.com".into()))
        );
        if let Verdict::Deny(reason) = denied {
            assert_eq!(reason.to_string(), "denied by pattern *.x.com");
        }
        assert_eq!(
            Reason::NotAllowlisted.to_string(),
            "not in the sandbox's allowlist"
        );
        assert_eq!(
            Reason::Private.to_string(),
            "private address (block_private)"
        );
    }
}
