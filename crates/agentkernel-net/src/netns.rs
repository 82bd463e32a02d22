//! Routes a sandbox's network namespace to the host-side proxy.
//!
//! [`attach`] enters the namespace on a short-lived thread (a namespace is a per-thread
//! attribute, so the caller's other threads never see it) and there:
//!
//! 1. makes every address local: a `local` route for 0.0.0.0/0 and ::/0 on loopback in the
//!    `local` table, so a connect to any address finds a route (no uplink, no veth, no TUN);
//! 2. creates the proxy's listening sockets on 127.0.0.1 and ::1 (TCP, and UDP for DNS), each
//!    on a port the kernel picks;
//! 3. installs one nftables table, `inet agentkernel`, whose nat `output` chain redirects every
//!    TCP connection to a non-loopback address to the TCP listener and every UDP datagram to
//!    port 53 to the DNS socket.
//!
//! The sockets stay usable after the thread leaves the namespace: the host serves them from
//! its own namespace, where it connects out for the program. The sandbox has no
//! CAP_NET_ADMIN, so it cannot change the route or the rule. `SO_ORIGINAL_DST` on an accepted
//! connection gives the address the program dialled.
//!
//! The netlink messages are written by hand: the only nftables crate in pure Rust
//! (`rustables`) is GPL-3.0, the others link libnftnl, and running `nft` costs a process
//! (~5 ms) per sandbox where these messages cost microseconds.

use crate::proxy::Listeners;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

/// The name of the nftables table agentkernel installs in a sandbox's namespace.
pub const TABLE: &str = "agentkernel";

/// The listening sockets [`attach`] made, with the ports the rule redirects to.
pub struct Attached {
    pub listeners: Listeners,
    pub tcp_port: u16,
    pub dns_port: u16,
}

/// Routes the network namespace `netns` (an open `/proc/PID/ns/net` or pin) to fresh
/// listening sockets, returned for the proxy to serve. Fails without changing anything the
/// sandbox could use when the namespace cannot be entered or the kernel refuses a message.
pub fn attach(netns: BorrowedFd<'_>) -> io::Result<Attached> {
    in_netns(netns, attach_here)
}

/// Runs `f` on a short-lived thread that has entered the network namespace `netns`.
pub(crate) fn in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let netns: OwnedFd = netns.try_clone_to_owned()?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                f()
            })
            .join()
            .map_err(|_| {
                io::Error::other("the thread that entered the sandbox's network namespace panicked")
            })?
    })
}

/// Whether this host can route a sandbox's namespace to the proxy: [`attach`] tried on a
/// fresh network namespace of a short-lived thread (`doctor`).
pub fn probe() -> io::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: only the network namespace of this one short-lived thread changes;
                // it shares nothing that depends on the old one, and ends right after.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
                attach_here().map(drop)
            })
            .join()
            .map_err(|_| io::Error::other("the egress probe panicked"))?
    })
}

/// [`attach`] in the calling thread's own namespace.
fn attach_here() -> io::Result<Attached> {
    let ipv6 = ipv6_available();
    add_local_routes(ipv6)?;
    let tcp4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let tcp_port = tcp4.local_addr()?.port();
    let dns4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let dns_port = dns4.local_addr()?.port();
    let mut tcp = vec![tcp4];
    let mut dns = vec![dns4];
    if ipv6 {
        // The same ports on ::1, so one rule serves both families.
        tcp.push(bind_v6_tcp(tcp_port)?);
        dns.push(UdpSocket::bind(SocketAddr::from((
            Ipv6Addr::LOCALHOST,
            dns_port,
        )))?);
    }
    install_redirect(tcp_port, dns_port, ipv6)?;
    Ok(Attached {
        listeners: Listeners { tcp, dns },
        tcp_port,
        dns_port,
    })
}

fn bind_v6_tcp(port: u16) -> io::Result<TcpListener> {
    let sock = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_ipv6_v6only(&sock, true)?;
    rustix::net::bind(&sock, &SocketAddr::from((Ipv6Addr::LOCALHOST, port)))?;
    rustix::net::listen(&sock, 1024)?;
    Ok(TcpListener::from(sock))
}

/// Whether this namespace has IPv6 (it may be disabled on the host's kernel command line or
/// by sysctl): binding ::1 is the test that counts.
fn ipv6_available() -> bool {
    UdpSocket::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).is_ok()
}

// ---- netlink ------------------------------------------------------------------------------

const NLMSG_HDRLEN: usize = 16;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;

/// A netlink message buffer: messages appended one after another (a batch), attributes and
/// nested attributes within the current message.
struct Batch {
    buf: Vec<u8>,
    msg_start: usize,
    nests: Vec<usize>,
    seq: u32,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: Vec::with_capacity(1024),
            msg_start: 0,
            nests: Vec::new(),
            seq: 0,
        }
    }

    /// Starts a message; `extra` is the family header after `nlmsghdr`.
    fn begin(&mut self, ty: u16, flags: u16, extra: &[u8]) {
        self.msg_start = self.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.extend_from_slice(extra);
        self.pad();
    }

    fn end(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    fn attr_str(&mut self, ty: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(ty, &bytes)
    }

    /// nftables carries its 32-bit attributes in network byte order.
    fn attr_be32(&mut self, ty: u16, value: u32) -> &mut Self {
        self.attr(ty, &value.to_be_bytes())
    }

    fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn unnest(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
}

/// Sends `batch` on a netlink socket of `protocol` and waits for the kernel to acknowledge
/// `acks` messages; the first error it reports is returned.
fn send(protocol: Option<rustix::net::Protocol>, batch: &Batch, acks: usize) -> io::Result<()> {
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        protocol,
    )?;
    rustix::net::send(&sock, &batch.buf, rustix::net::SendFlags::empty())?;
    let mut reply = vec![0u8; 8192];
    let mut seen = 0;
    while seen < acks {
        let (n, _) = rustix::net::recv(&sock, &mut reply, rustix::net::RecvFlags::empty())?;
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
                as usize;
            let ty = u16::from_ne_bytes([reply[at + 4], reply[at + 5]]);
            if len < NLMSG_HDRLEN || at + len > n {
                break;
            }
            if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                let p = at + NLMSG_HDRLEN;
                let code = i32::from_ne_bytes([reply[p], reply[p + 1], reply[p + 2], reply[p + 3]]);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                seen += 1;
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            break;
        }
    }
    Ok(())
}

const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;

/// `ip link set lo up` (a no-op where it is up) and `ip route add local 0.0.0.0/0 dev lo
/// table local` (and `::/0` with IPv6).
fn add_local_routes(ipv6: bool) -> io::Result<()> {
    let mut batch = Batch::new();
    // struct ifinfomsg: family, pad, type, index 1 (loopback), flags, change mask.
    let mut ifinfo = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    ifinfo.extend_from_slice(&1i32.to_ne_bytes());
    ifinfo.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    ifinfo.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    batch.begin(libc::RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, &ifinfo);
    batch.end();
    let families: &[u8] = if ipv6 {
        &[libc::AF_INET as u8, libc::AF_INET6 as u8]
    } else {
        &[libc::AF_INET as u8]
    };
    for &family in families {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        let mut rtmsg = vec![
            family,
            0,
            0,
            0,
            libc::RT_TABLE_LOCAL,
            libc::RTPROT_BOOT,
            libc::RT_SCOPE_HOST,
            libc::RTN_LOCAL,
        ];
        rtmsg.extend_from_slice(&0u32.to_ne_bytes());
        batch.begin(
            libc::RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &rtmsg,
        );
        // The loopback device is index 1 in every network namespace.
        batch.attr(libc::RTA_OIF, &1u32.to_ne_bytes());
        batch.end();
    }
    // Protocol 0 of AF_NETLINK is NETLINK_ROUTE.
    send(None, &batch, families.len() + 1)
}

// nfnetlink and nf_tables numbers (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;

const CHAIN: &str = "output";

/// One nftables rule's expressions, in order.
enum Expr<'a> {
    /// `meta KEY` into register 1.
    Meta(u32),
    /// Register 1 compared with `data`.
    Cmp(u32, &'a [u8]),
    /// `len` bytes at `offset` of header `base` into register 1.
    Payload(u32, u32, u32),
    /// Register 1 masked with `mask`.
    And(&'a [u8]),
    /// `data` into register 1.
    Immediate(&'a [u8]),
    /// Redirect to the local port held in register 1.
    Redirect,
}

fn put_expr(batch: &mut Batch, expr: &Expr<'_>) {
    batch.nest(NFTA_LIST_ELEM);
    match expr {
        Expr::Meta(key) => {
            batch.attr_str(NFTA_EXPR_NAME, "meta").nest(NFTA_EXPR_DATA);
            batch
                .attr_be32(2 /* KEY */, *key)
                .attr_be32(1 /* DREG */, NFT_REG_1);
        }
        Expr::Cmp(op, data) => {
            batch.attr_str(NFTA_EXPR_NAME, "cmp").nest(NFTA_EXPR_DATA);
            batch
                .attr_be32(1 /* SREG */, NFT_REG_1)
                .attr_be32(2 /* OP */, *op);
            batch
                .nest(3 /* DATA */)
                .attr(NFTA_DATA_VALUE, data)
                .unnest();
        }
        Expr::Payload(base, offset, len) => {
            batch
                .attr_str(NFTA_EXPR_NAME, "payload")
                .nest(NFTA_EXPR_DATA);
            batch
                .attr_be32(1 /* DREG */, NFT_REG_1)
                .attr_be32(2 /* BASE */, *base)
                .attr_be32(3 /* OFFSET */, *offset)
                .attr_be32(4 /* LEN */, *len);
        }
        Expr::And(mask) => {
            batch
                .attr_str(NFTA_EXPR_NAME, "bitwise")
                .nest(NFTA_EXPR_DATA);
            batch
                .attr_be32(1 /* SREG */, NFT_REG_1)
                .attr_be32(2 /* DREG */, NFT_REG_1)
                .attr_be32(3 /* LEN */, mask.len() as u32);
            batch
                .nest(4 /* MASK */)
                .attr(NFTA_DATA_VALUE, mask)
                .unnest();
            let zeros = vec![0u8; mask.len()];
            batch
                .nest(5 /* XOR */)
                .attr(NFTA_DATA_VALUE, &zeros)
                .unnest();
        }
        Expr::Immediate(data) => {
            batch
                .attr_str(NFTA_EXPR_NAME, "immediate")
                .nest(NFTA_EXPR_DATA);
            batch.attr_be32(1 /* DREG */, NFT_REG_1);
            batch
                .nest(2 /* DATA */)
                .attr(NFTA_DATA_VALUE, data)
                .unnest();
        }
        Expr::Redirect => {
            batch.attr_str(NFTA_EXPR_NAME, "redir").nest(NFTA_EXPR_DATA);
            batch.attr_be32(1 /* REG_PROTO_MIN */, NFT_REG_1);
        }
    }
    batch.unnest(); // EXPR_DATA
    batch.unnest(); // LIST_ELEM
}

fn put_rule(batch: &mut Batch, exprs: &[Expr<'_>]) {
    batch.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        &nfgenmsg(NFPROTO_INET),
    );
    batch
        .attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, CHAIN)
        .nest(NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        put_expr(batch, e);
    }
    batch.unnest();
    batch.end();
}

/// `struct nfgenmsg`: family, version 0, resource id (big-endian) 0.
fn nfgenmsg(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

/// The table, its nat output chain and the redirect rules, in one transaction:
///
/// ```text
/// table inet agentkernel {
///   chain output { type nat hook output priority -100;
///     meta nfproto ipv4 meta l4proto tcp ip daddr & 255.0.0.0 != 127.0.0.0 redirect to :TCP
///     meta nfproto ipv6 meta l4proto tcp ip6 daddr != ::1 redirect to :TCP
///     meta l4proto udp udp dport 53 redirect to :DNS
///   }
/// }
/// ```
fn install_redirect(tcp_port: u16, dns_port: u16, ipv6: bool) -> io::Result<()> {
    let mut batch = Batch::new();
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    batch.begin(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        &[0, 0, subsys[0], subsys[1]],
    );
    batch.end();

    batch.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        &nfgenmsg(NFPROTO_INET),
    );
    batch.attr_str(NFTA_TABLE_NAME, TABLE);
    batch.end();

    batch.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        &nfgenmsg(NFPROTO_INET),
    );
    batch
        .attr_str(NFTA_CHAIN_TABLE, TABLE)
        .attr_str(NFTA_CHAIN_NAME, CHAIN)
        .nest(NFTA_CHAIN_HOOK)
        .attr_be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT)
        .attr_be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_DST as u32)
        .unnest()
        .attr_str(NFTA_CHAIN_TYPE, "nat");
    batch.end();

    let tcp = [libc::IPPROTO_TCP as u8];
    let udp = [libc::IPPROTO_UDP as u8];
    let tcp_to = tcp_port.to_be_bytes();
    let dns_to = dns_port.to_be_bytes();
    put_rule(
        &mut batch,
        &[
            Expr::Meta(NFT_META_NFPROTO),
            Expr::Cmp(NFT_CMP_EQ, &[NFPROTO_IPV4]),
            Expr::Meta(NFT_META_L4PROTO),
            Expr::Cmp(NFT_CMP_EQ, &tcp),
            // ip daddr: offset 16 of the IPv4 header.
            Expr::Payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
            Expr::And(&[255, 0, 0, 0]),
            Expr::Cmp(NFT_CMP_NEQ, &[127, 0, 0, 0]),
            Expr::Immediate(&tcp_to),
            Expr::Redirect,
        ],
    );
    let mut rules = 4;
    if ipv6 {
        put_rule(
            &mut batch,
            &[
                Expr::Meta(NFT_META_NFPROTO),
                Expr::Cmp(NFT_CMP_EQ, &[NFPROTO_IPV6]),
                Expr::Meta(NFT_META_L4PROTO),
                Expr::Cmp(NFT_CMP_EQ, &tcp),
                // ip6 daddr: offset 24 of the IPv6 header.
                Expr::Payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
                Expr::Cmp(NFT_CMP_NEQ, &Ipv6Addr::LOCALHOST.octets()),
                Expr::Immediate(&tcp_to),
                Expr::Redirect,
            ],
        );
        rules += 1;
    }
    put_rule(
        &mut batch,
        &[
            Expr::Meta(NFT_META_L4PROTO),
            Expr::Cmp(NFT_CMP_EQ, &udp),
            // udp dport: offset 2 of the UDP header.
            Expr::Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            Expr::Cmp(NFT_CMP_EQ, &53u16.to_be_bytes()),
            Expr::Immediate(&dns_to),
            Expr::Redirect,
        ],
    );

    batch.begin(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        &[0, 0, subsys[0], subsys[1]],
    );
    batch.end();
    // Acknowledged: the table, the chain and each rule.
    send(Some(rustix::net::netlink::NETFILTER), &batch, rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Runs `f` on a thread of its own in a fresh network namespace with loopback up.
    fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: only the network namespace of this one thread changes; it shares
                // nothing that depends on the old one.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                    .expect("unshare a network namespace (run the tests as root)");
                f()
            })
            .join()
            .expect("test thread")
        })
    }

    /// SO_ORIGINAL_DST of an accepted IPv4 connection.
    fn original_dst(stream: &std::net::TcpStream) -> SocketAddr {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the fd is open for the call; addr and len describe a writable buffer of
        // the size given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_IP,
                80, // SO_ORIGINAL_DST
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_ORIGINAL_DST: {}", io::Error::last_os_error());
        SocketAddr::from((
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }

    #[test]
    fn every_outbound_connection_and_dns_query_reaches_the_listeners() {
        in_fresh_netns(|| {
            let ns = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
            let attached = attach(ns.as_fd()).expect("attach");
            assert!(attached.tcp_port != 0 && attached.dns_port != 0);
            let listener = &attached.listeners.tcp[0];
            for dest in ["203.0.113.7:443", "169.254.169.254:80", "10.1.2.3:5432"] {
                let mut client = std::net::TcpStream::connect(dest).expect("connect");
                let (mut accepted, _) = listener.accept().expect("accept");
                assert_eq!(original_dst(&accepted).to_string(), dest);
                client.write_all(b"ping").expect("write");
                let mut buf = [0u8; 4];
                accepted.read_exact(&mut buf).expect("read");
                assert_eq!(&buf, b"ping");
            }
            let dns = &attached.listeners.dns[0];
            let client = UdpSocket::bind("0.0.0.0:0").expect("udp");
            client.send_to(b"query", "192.0.2.53:53").expect("send");
            let mut buf = [0u8; 16];
            let (n, from) = dns.recv_from(&mut buf).expect("dns recv");
            assert_eq!(&buf[..n], b"query");
            dns.send_to(b"answer", from).expect("reply");
            let (n, from) = client.recv_from(&mut buf).expect("client recv");
            assert_eq!(
                (&buf[..n], from.to_string().as_str()),
                (&b"answer"[..], "192.0.2.53:53")
            );
        });
    }
}
