//! The first phase of a run: every stream opened, in batches, and its head read; and the
//! connections themselves, from one loopback source address or several.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::wire::{PINGER_BASE, PROBE, Pinger, Stream, StreamState, drive_stream};
use super::{Load, Opened};

impl Load<'_> {
    /// Opens the streams in batches of 500, so the listen backlog is not what is measured.
    pub(super) fn open_streams(&mut self) -> Result<Opened, String> {
        let o = self.o;
        let opening = Instant::now();
        let (mut established, mut refused) = (0, 0);
        while established + refused < o.streams {
            let target = (self.streams.len() + 500).min(o.streams);
            while self.streams.len() < target {
                let i = self.streams.len();
                let socket = self.connect(Token(i))?;
                // Stream i watches the K users from i * K on: each user is watched by about
                // streams * K / users streams.
                let users = (0..o.users_per_stream)
                    .map(|k| (i * o.users_per_stream + k) % o.users)
                    .collect();
                let mut stream = Stream::new(socket, users, o.dialect);
                stream.watcher = o.claims.then(|| format!("watcher-{i}"));
                self.streams.push(stream);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while established + refused < self.streams.len() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "only {established} of {} streams opened within 30 s",
                        self.streams.len()
                    ));
                }
                self.poll
                    .poll(&mut self.events, Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                for event in &self.events {
                    let stream = &mut self.streams[event.token().0];
                    match drive_stream(stream, self.nonce, &mut self.seen, None) {
                        StreamState::Opened => {
                            established += 1;
                            for &user in &stream.users {
                                self.subscribers[user] += 1;
                            }
                        }
                        StreamState::Failed => refused += 1,
                        StreamState::Same => {}
                    }
                }
            }
        }
        Ok(Opened {
            established,
            refused,
            took: opening.elapsed(),
        })
    }

    /// A connection to the server, registered with the event loop under `token`; from the
    /// next of the `--sources` loopback addresses in turn.
    fn connect(&mut self, token: Token) -> Result<TcpStream, String> {
        let mut socket = match self.o.sources {
            1 => TcpStream::connect(self.o.addr).map_err(|e| format!("connect: {e}"))?,
            n => {
                let source = [127, 0, 0, 1 + (self.connections % n as usize) as u8];
                connect_from(source.into(), self.o.addr)?
            }
        };
        self.connections += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut socket, token, interest)
            .map_err(|e| e.to_string())?;
        Ok(socket)
    }

    /// The probe: a stream of the first `probe_users` users, pinged early in the run, so each
    /// has a cached ping.
    pub(super) fn open_probe(&mut self) -> Result<Stream, String> {
        let socket = self.connect(Token(PROBE))?;
        let users = (0..self.o.probe_users).collect();
        let mut stream = Stream::new(socket, users, self.o.dialect);
        stream.watcher = self.o.claims.then(|| "watcher-probe".to_owned());
        Ok(stream)
    }

    /// The keep-alive connections pings go out on.
    pub(super) fn connect_pingers(&mut self) -> Result<Vec<Pinger>, String> {
        let mut pingers = Vec::with_capacity(self.o.ping_connections);
        for i in 0..self.o.ping_connections {
            let socket = self.connect(Token(PINGER_BASE + i))?;
            socket.set_nodelay(true).map_err(|e| e.to_string())?;
            pingers.push(Pinger {
                socket,
                connected: false,
                in_flight: None,
                buf: Vec::new(),
            });
        }
        Ok(pingers)
    }
}

/// EINPROGRESS on Linux: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;

/// A non-blocking connection to `addr` from the address `source` (any free port of it).
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> Result<TcpStream, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    let failed = |e: std::io::Error| format!("connect from {source}: {e}");
    socket.set_nonblocking(true).map_err(failed)?;
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .map_err(failed)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    Ok(TcpStream::from_std(socket.into()))
}
