//! (being written: see lib.rs)

/// The listening sockets a sandbox's namespace redirects to (see `netns::attach`).
pub struct Listeners {
    pub tcp: Vec<std::net::TcpListener>,
    pub dns: Vec<std::net::UdpSocket>,
}
