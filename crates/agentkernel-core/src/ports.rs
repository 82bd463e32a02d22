//! Published ports (`-P/--publish`): a port of the host that reaches a port inside a sandbox.
//!
//! Parsed and checked here, once, for every surface: `PORT` (the same port on both sides),
//! `HOST:SANDBOX`, or `IP:HOST:SANDBOX` as Docker writes them, with an optional `/tcp`. Unlike
//! Docker, a port is bound on 127.0.0.1 unless an address is named: a sandbox's server is
//! reachable from this machine only, never from the network, until the user says so.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// At most this many ports per sandbox.
pub const MAX_PORTS: usize = 64;

/// One published port: connections to `host_ip:host_port` on the host reach `sandbox_port` on
/// the sandbox's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub sandbox_port: u16,
}

impl std::fmt::Display for PublishedPort {
    /// As Docker shows it: `127.0.0.1:8080->80/tcp` (`[::1]:8080->80/tcp` for IPv6).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = self.sandbox_port;
        match self.host_ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}->{to}/tcp", self.host_port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}->{to}/tcp", self.host_port),
        }
    }
}

impl std::str::FromStr for PublishedPort {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<PublishedPort, CoreError> {
        let bad = |why: &str| {
            CoreError::InvalidArgument(format!(
                "--publish {text:?}: {why}; write PORT, HOST_PORT:SANDBOX_PORT or IP:HOST_PORT:SANDBOX_PORT (e.g. 3000, 8080:80, 0.0.0.0:8080:80)"
            ))
        };
        let spec = match text.rsplit_once('/') {
            Some((spec, "tcp")) => spec,
            Some((_, "udp" | "sctp")) => {
                return Err(bad(
                    "only TCP ports can be published (the sandbox's UDP reaches no host socket)",
                ));
            }
            Some((_, proto)) => return Err(bad(&format!("unknown protocol {proto:?}"))),
            None => text,
        };
        let port = |p: &str| -> Result<u16, CoreError> {
            match p.parse::<u64>() {
                Ok(n) => match u16::try_from(n) {
                    Ok(port) if port != 0 => Ok(port),
                    _ => Err(bad(&format!("port {n} is out of range 1-65535"))),
                },
                Err(_) => Err(bad(&format!("{p:?} is not a port number"))),
            }
        };
        // An IPv6 host address is written in brackets: [::1]:8080:80.
        let (ip, rest) = if let Some(after) = spec.strip_prefix('[') {
            let (ip, rest) = after
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 address in brackets is followed by :HOST_PORT"))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
            (Some(ip), rest)
        } else {
            match spec.splitn(3, ':').collect::<Vec<_>>().as_slice() {
                [_, _, _] => {
                    let (ip, rest) = spec.split_once(':').unwrap_or_default();
                    let ip: IpAddr = ip
                        .parse()
                        .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
                    (Some(ip), rest)
                }
                _ => (None, spec),
            }
        };
        let (host_port, sandbox_port) = match rest.split_once(':') {
            Some((h, s)) => (port(h)?, port(s)?),
            None if ip.is_none() => {
                let p = port(rest)?;
                (p, p)
            }
            None => return Err(bad("an address is followed by HOST_PORT:SANDBOX_PORT")),
        };
        Ok(PublishedPort {
            host_ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_port,
            sandbox_port,
        })
    }
}

/// Parses a request's `--publish` values: each well formed, at most [`MAX_PORTS`], and no host
/// port published twice (on the same address, or on one and the unspecified address).
pub fn parse_ports(texts: &[String]) -> Result<Vec<PublishedPort>, CoreError> {
    if texts.len() > MAX_PORTS {
        return Err(CoreError::InvalidArgument(format!(
            "at most {MAX_PORTS} published ports per sandbox"
        )));
    }
    let mut ports: Vec<PublishedPort> = Vec::with_capacity(texts.len());
    for text in texts {
        let p: PublishedPort = text.parse()?;
        if let Some(other) = ports.iter().find(|o| {
            o.host_port == p.host_port
                && (o.host_ip == p.host_ip
                    || o.host_ip.is_unspecified()
                    || p.host_ip.is_unspecified())
        }) {
            return Err(CoreError::InvalidArgument(format!(
                "--publish {text:?}: host port {} is already published ({other}); give each mapping its own host port",
                p.host_port
            )));
        }
        ports.push(p);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<PublishedPort, CoreError> {
        text.parse()
    }

    #[test]
    fn the_docker_forms_parse_with_loopback_as_the_default_address() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = |host_ip, host_port, sandbox_port| PublishedPort {
            host_ip,
            host_port,
            sandbox_port,
        };
        assert_eq!(p("3000").expect("3000"), port(lo, 3000, 3000));
        assert_eq!(p("8080:80").expect("8080:80"), port(lo, 8080, 80));
        assert_eq!(p("8080:80/tcp").expect("8080:80/tcp"), port(lo, 8080, 80));
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        assert_eq!(
            p("0.0.0.0:8080:80").expect("0.0.0.0:8080:80"),
            port(any, 8080, 80)
        );
        let v6: IpAddr = "::1".parse().expect("ip");
        assert_eq!(
            p("[::1]:8080:80").expect("[::1]:8080:80"),
            port(v6, 8080, 80)
        );
        assert_eq!(
            p("8080:80").expect("8080:80").to_string(),
            "127.0.0.1:8080->80/tcp"
        );
        assert_eq!(
            p("[::1]:8080:80").expect("[::1]:8080:80").to_string(),
            "[::1]:8080->80/tcp"
        );
    }

    #[test]
    fn bad_ports_are_refused_with_the_forms_that_work() {
        for bad in [
            "70000",
            "0",
            "abc",
            "8080:80/udp",
            "8080:",
            ":80",
            "1.2.3:8080:80",
            "127.0.0.1:8080",
            "8080:80/xyz",
            "",
        ] {
            let e = p(bad).expect_err(bad).to_string();
            assert!(e.contains("--publish"), "{bad}: {e}");
        }
        assert!(
            p("8080:80/udp")
                .expect_err("8080:80/udp")
                .to_string()
                .contains("TCP")
        );
        assert!(
            p("70000")
                .expect_err("70000")
                .to_string()
                .contains("1-65535")
        );
    }

    #[test]
    fn a_host_port_is_published_once() {
        let list = |v: &[&str]| parse_ports(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(list(&["8080:80", "8081:80"]).is_ok());
        assert!(list(&["8080:80", "8080:81"]).is_err());
        assert!(list(&["0.0.0.0:8080:80", "8080:81"]).is_err());
        assert!(list(&["127.0.0.2:8080:80", "8080:81"]).is_ok());
    }
}
