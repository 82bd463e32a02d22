//! Published ports: host listeners whose connections are joined to connections made inside a
//! sandbox's network namespace.
//!
//! A sandbox has no address the host can route to (a native one has no veth; a container runs
//! with no network of its engine's), so a published port is not a NAT rule: [`bind`] opens a
//! listening socket on the host, and [`serve`] answers each connection to it with a new TCP
//! connection to `127.0.0.1:SANDBOX_PORT` made from a socket created inside the sandbox's
//! namespace (on a short-lived thread that enters it, as [`crate::netns`] does: a namespace is
//! a per-thread attribute, and a socket stays in the namespace it was made in). A server the
//! sandbox runs on 0.0.0.0 or 127.0.0.1 is reached alike, and the egress rule (which redirects
//! only non-loopback destinations) leaves these connections alone. Bytes are copied both ways
//! until both sides are done; a half-close on one side is passed on to the other.
//!
//! The same code serves every backend whose sandboxes have a network namespace on this host
//! (native, and Docker/Podman containers entered through their init's pid).

use crate::netns::in_netns;
use agentkernel_core::ports::PublishedPort;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

/// Ports below this need CAP_NET_BIND_SERVICE to bind, which a sandbox may not have.
const PRIVILEGED_BELOW: u16 = 1024;

/// Binds the host side of `ports`: one listening socket each. A port already in use fails with
/// an error that names it.
pub fn bind(ports: &[PublishedPort]) -> io::Result<Vec<(PublishedPort, TcpListener)>> {
    ports
        .iter()
        .map(|p| {
            let addr = SocketAddr::new(p.host_ip, p.host_port);
            let listener = TcpListener::bind(addr).map_err(|e| {
                let what = match e.kind() {
                    io::ErrorKind::AddrInUse => {
                        "is already in use: stop what listens there or publish another host port"
                            .to_string()
                    }
                    io::ErrorKind::AddrNotAvailable => {
                        "is not an address of this host: publish on 127.0.0.1 or an address the host has"
                            .to_string()
                    }
                    _ => format!("cannot be bound ({e})"),
                };
                io::Error::new(e.kind(), format!("host port {addr} (--publish {p}) {what}"))
            })?;
            listener.set_nonblocking(true)?;
            Ok((*p, listener))
        })
        .collect()
}

/// Lets programs in the namespace `netns` bind the published sandbox ports below 1024 (a
/// restrictive sandbox, or an unprivileged user in any, has no CAP_NET_BIND_SERVICE): lowers `net.ipv4.ip_unprivileged_port_start`, a
/// setting of each network namespace, in the sandbox's namespace only — written from a
/// thread that entered it, never the host's.
pub fn allow_low_ports(netns: BorrowedFd<'_>, ports: &[PublishedPort]) -> io::Result<()> {
    let Some(lowest) = ports
        .iter()
        .map(|p| p.sandbox_port)
        .filter(|&p| p < PRIVILEGED_BELOW)
        .min()
    else {
        return Ok(());
    };
    in_netns(netns, move || {
        let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
        let current: u16 = std::fs::read_to_string(path)?
            .trim()
            .parse()
            .unwrap_or(PRIVILEGED_BELOW);
        if current > lowest {
            std::fs::write(path, lowest.to_string())?;
        }
        Ok(())
    })
}

/// A TCP socket of the namespace `netns`, not yet connected.
fn socket_in(netns: BorrowedFd<'_>) -> io::Result<tokio::net::TcpSocket> {
    let sock = in_netns(netns, || {
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )?;
        Ok(sock)
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(
        std::net::TcpStream::from(sock),
    ))
}

/// Serves `listeners` (from [`bind`]) until the future is dropped: each connection is joined to
/// a new one to the sandbox port on the loopback of the namespace `netns`. A connection the
/// sandbox refuses (nothing listens there yet) is closed.
pub async fn serve(listeners: Vec<(PublishedPort, TcpListener)>, netns: OwnedFd) -> io::Result<()> {
    let netns = Arc::new(netns);
    let mut tasks = tokio::task::JoinSet::new();
    for (port, listener) in listeners {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let netns = netns.clone();
        tasks.spawn(async move {
            loop {
                let Ok((mut outside, _)) = listener.accept().await else {
                    // Out of descriptors or the like: wait and go on listening.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let netns = netns.clone();
                tokio::spawn(async move {
                    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port.sandbox_port));
                    let Ok(sock) = socket_in(netns.as_fd()) else {
                        return;
                    };
                    let Ok(mut inside) = sock.connect(to).await else {
                        return;
                    };
                    let _ = outside.set_nodelay(true);
                    let _ = inside.set_nodelay(true);
                    // Copies both ways; at EOF on one side it shuts down writing on the other.
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_published_port_reaches_a_server_inside_another_namespace() {
        // The "sandbox": a fresh network namespace of a thread, with loopback up and a server
        // on its 127.0.0.1 that echoes in upper case until the client half-closes.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            // SAFETY: only the network namespace of this one thread changes; it shares
            // nothing that depends on the old one.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare a network namespace (run the tests as root)");
            std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .ok();
            let ns = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            tx.send((
                OwnedFd::from(ns),
                listener.local_addr().expect("addr").port(),
            ))
            .expect("send");
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            conn.read_to_end(&mut got).expect("read");
            conn.write_all(&got.to_ascii_uppercase()).expect("write");
        });
        let (netns, inside_port) = rx.recv().expect("netns");
        let published = PublishedPort {
            host_ip: Ipv4Addr::LOCALHOST.into(),
            host_port: 0,
            sandbox_port: inside_port,
        };
        let listeners = bind(&[published]).expect("bind");
        let host_addr = listeners[0].1.local_addr().expect("addr");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        std::thread::spawn(move || runtime.block_on(serve(listeners, netns)));
        let mut client = std::net::TcpStream::connect(host_addr).expect("connect");
        client.write_all(b"hello").expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("read");
        assert_eq!(answer, "HELLO");
        server.join().expect("server");
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let e = bind(&[PublishedPort {
            host_ip: Ipv4Addr::LOCALHOST.into(),
            host_port: port,
            sandbox_port: 80,
        }])
        .expect_err("in use");
        assert!(e.to_string().contains("already in use"), "{e}");
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }
}
