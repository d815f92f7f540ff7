//! The listening socket: binding `LISTEN`, and stopping the accept loop from another thread.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Listen, host_port};

/// Pending connections the kernel may queue (it caps this at `net.core.somaxconn`). std's
/// 128 drops SYNs when a thousand EventSources reconnect at once, and a dropped SYN is only
/// retried a second later.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `LISTEN`. An empty host means all interfaces: IPv6 and IPv4 where the host has
/// IPv6, IPv4 alone where it does not (as in some containers). The error names the address.
pub fn bind(listen: &Listen) -> Result<TcpListener, (String, io::Error)> {
    let port = listen.port;
    let text = match listen.host.as_str() {
        "" => {
            return bind_addr((Ipv6Addr::UNSPECIFIED, port).into())
                .or_else(|_| bind_addr((Ipv4Addr::UNSPECIFIED, port).into()));
        }
        host => host_port(host, port),
    };
    let addrs = text.to_socket_addrs().map_err(|e| (text.clone(), e))?;
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match bind_addr(addr) {
            Ok(listener) => return Ok(listener),
            Err((_, e)) => last_error = e,
        }
    }
    Err((text, last_error))
}

fn bind_addr(addr: SocketAddr) -> Result<TcpListener, (String, io::Error)> {
    let listen = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // A restarted instance can bind while its old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    listen().map_err(|e| (addr.to_string(), e))
}

/// Stops a running [`Server`](super::Server) from another thread.
#[derive(Clone)]
pub struct Stopper {
    pub(super) stop: Sender<()>,
    /// The listening address, made connectable (loopback for an unspecified address).
    pub(super) wake: SocketAddr,
}

impl Stopper {
    /// Tells the accept loop to stop, then connects once: the loop is blocked in `accept`,
    /// and only a connection wakes it to see the message.
    pub fn stop(&self) {
        let _ = self.stop.try_send(());
        let _ = TcpStream::connect(self.wake);
    }
}

/// `addr` as a client can connect to it: an unspecified address becomes loopback.
pub(super) fn connectable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
