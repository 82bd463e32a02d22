//! Egress of agentkernel sandboxes.
//!
//! A networked sandbox (network mode `allowlist` or `full`) has no uplink of its own. Inside
//! its network namespace every address is local (a `local` route for 0.0.0.0/0 and ::/0 on
//! loopback) and one nftables rule sends every outbound TCP connection to a listening socket
//! the host created in that namespace, and every DNS query to a UDP socket next to it
//! ([`netns`]). The host side ([`proxy`], [`dns`]) reads the address the program dialled
//! (`SO_ORIGINAL_DST`), the name it asked for (TLS SNI, HTTP Host, CONNECT target), decides by
//! the sandbox's [`rules`], and connects out for it from the host, adding bound secrets to
//! requests for their hosts ([`tls`]). The sandbox has no CAP_NET_ADMIN: it cannot change
//! the route or the rule.
//!
//! Inbound, [`forward`] serves published ports: a host listener per port, each connection
//! joined to one made inside the sandbox's namespace.

pub mod dns;
pub mod forward;
pub mod netns;
pub mod proxy;
pub mod resolve;
pub mod rules;
pub mod tls;
