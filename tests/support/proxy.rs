//! A TCP proxy whose link can be frozen or cut, so one instance can lose Redis while Redis
//! itself stays up for the others.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// What a [`Proxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Pass,
    /// Keeps connections open and forwards nothing: a half-dead link.
    Freeze,
    /// Closes every connection and refuses new ones.
    Cut,
}

/// A TCP proxy in front of a port, whose link can be frozen or cut, so one instance can lose
/// Redis while Redis itself stays up for the others.
pub struct Proxy {
    pub port: u16,
    link: std::sync::Arc<parking_lot::Mutex<Link>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = std::sync::Arc::new(parking_lot::Mutex::new(Link::Pass));
        let shared = link.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if *shared.lock() == Link::Cut {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let link = shared.clone();
                    std::thread::spawn(move || pump(from, to, &link));
                }
            }
        });
        Proxy { port, link }
    }

    pub fn set(&self, link: Link) {
        *self.link.lock() = link;
    }

    /// The `REDIS` value that points heartbeat through this proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: &parking_lot::Mutex<Link>) {
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0; 16 * 1024];
    loop {
        match *link.lock() {
            Link::Cut => break,
            Link::Freeze => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Link::Pass => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
