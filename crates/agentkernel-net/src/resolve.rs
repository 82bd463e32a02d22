//! Name resolution for the proxy and the DNS responder: the host's resolver, with overrides.
//!
//! Overrides map a name to addresses chosen by whoever starts the proxy, and win over the
//! system. [`Resolver::from_env`] reads them from `AGENTKERNEL_RESOLVE`, written
//! `name=ip[,ip...][;name2=ip...]`, e.g.
//! `AGENTKERNEL_RESOLVE='api.test=10.77.0.1;dual.test=10.77.0.2,fd77::2'`: tests point names
//! at servers they started, without a DNS server.

use crate::rules::parse_host_literal;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// The environment variable [`Resolver::from_env`] reads overrides from.
pub const RESOLVE_ENV: &str = "AGENTKERNEL_RESOLVE";

/// How long a system lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves names to addresses: overrides first, then (unless disabled) the system resolver.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: HashMap<String, Vec<IpAddr>>,
    /// Whether names without an override go to the system resolver.
    system: bool,
}

fn key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl Resolver {
    /// The host's resolver (`getaddrinfo` through tokio), no overrides.
    pub fn system() -> Self {
        Resolver {
            overrides: HashMap::new(),
            system: true,
        }
    }

    /// Only the given overrides: any other name fails to resolve and nothing is sent on the
    /// network (for tests).
    pub fn fixed<I, S>(overrides: I) -> Self
    where
        I: IntoIterator<Item = (S, Vec<IpAddr>)>,
        S: AsRef<str>,
    {
        let mut r = Resolver::default();
        for (name, ips) in overrides {
            r = r.with_override(name.as_ref(), ips);
        }
        r
    }

    /// The system resolver plus the overrides in `AGENTKERNEL_RESOLVE` (see the module doc).
    pub fn from_env() -> io::Result<Self> {
        let mut r = Resolver::system();
        if let Ok(spec) = std::env::var(RESOLVE_ENV) {
            for (name, ips) in parse_overrides(&spec)? {
                r = r.with_override(&name, ips);
            }
        }
        Ok(r)
    }

    /// This resolver with `name` resolving to `ips` (replacing an earlier override).
    pub fn with_override(mut self, name: &str, ips: Vec<IpAddr>) -> Self {
        self.overrides.insert(key(name), ips);
        self
    }

    /// The addresses of `name` (an override, an address literal, or the system's answer).
    pub async fn lookup(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let name = key(name);
        if let Some(ips) = self.overrides.get(&name) {
            return Ok(ips.clone());
        }
        if let Some(ip) = parse_host_literal(&name) {
            return Ok(vec![ip]);
        }
        if !self.system {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} has no override and system lookups are off"),
            ));
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((&*name, 0)))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("looking up {name} took over {LOOKUP_TIMEOUT:?}: check the host's DNS"),
                )
            })??;
        let mut ips: Vec<IpAddr> = Vec::new();
        for sa in found {
            if !ips.contains(&sa.ip()) {
                ips.push(sa.ip());
            }
        }
        Ok(ips)
    }
}

/// Parses `name=ip[,ip...][;name=ip...]` (spaces around parts ignored, empty entries skipped).
pub fn parse_overrides(spec: &str) -> io::Result<Vec<(String, Vec<IpAddr>)>> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{RESOLVE_ENV}: {why}; write name=ip[,ip...][;name2=ip...]"),
        )
    };
    let mut out = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, ips) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} has no '='")))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad(format!("{entry:?} has no name")));
        }
        let ips = ips
            .split(',')
            .map(|ip| {
                let ip = ip.trim();
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .unwrap_or(ip);
                ip.parse::<IpAddr>()
                    .map_err(|_| bad(format!("{ip:?} (for {name}) is not an IP address")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        out.push((key(name), ips));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse() {
        let o =
            parse_overrides(" a.test=10.0.0.1 ; B.Test.=10.0.0.2,[fd00::2];").expect("test input");
        assert_eq!(
            o,
            vec![
                (
                    "a.test".to_string(),
                    vec!["10.0.0.1".parse().expect("test input")]
                ),
                (
                    "b.test".to_string(),
                    vec![
                        "10.0.0.2".parse().expect("test input"),
                        "fd00::2".parse().expect("test input")
                    ]
                ),
            ]
        );
        for bad in ["a.test", "=1.2.3.4", "a=notip", "a=1.2.3.4,"] {
            assert!(parse_overrides(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_win_and_fixed_resolvers_never_ask_the_system() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test input");
        rt.block_on(async {
            let r = Resolver::fixed([("A.test", vec!["10.0.0.1".parse().expect("test input")])]);
            assert_eq!(
                r.lookup("a.test.").await.expect("test input"),
                vec!["10.0.0.1".parse::<IpAddr>().expect("test input")]
            );
            assert_eq!(
                r.lookup("0x0a000002").await.expect("test input"),
                vec!["10.0.0.2".parse::<IpAddr>().expect("test input")]
            );
            assert!(r.lookup("other.test").await.is_err());
        });
    }
}
