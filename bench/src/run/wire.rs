//! The load generator's sockets: event streams read with chunked framing and SSE parsed
//! as it arrives, and keep-alive connections sending pings.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::report::Seen;
use super::user_name;
use crate::Dialect;

/// One event stream being read.
pub(super) struct Stream {
    pub(super) socket: TcpStream,
    /// The users it watches: one by `/subscribe/:userid`, more by `/subscribe?user=...`.
    pub(super) users: Vec<usize>,
    /// When its request was written.
    pub(super) requested_at: Option<Instant>,
    pub(super) head_done: bool,
    pub(super) buf: Vec<u8>,
    /// Events read, and the pings of this run among them (to find repeats).
    pub(super) events: usize,
    pub(super) pings: HashSet<u32>,
    /// The users whose offline event of this run it read (each user leaves once).
    pub(super) offline: HashSet<u32>,
    /// The watcher it claims to be (`X-User-Claim`), for a server that needs one.
    pub(super) watcher: Option<String>,
    dialect: Dialect,
}

impl Stream {
    pub(super) fn new(socket: TcpStream, users: Vec<usize>, dialect: Dialect) -> Stream {
        Stream {
            socket,
            dialect,
            users,
            requested_at: None,
            head_done: false,
            buf: Vec::new(),
            events: 0,
            pings: HashSet::new(),
            offline: HashSet::new(),
            watcher: None,
        }
    }

    /// `GET` of this stream's users: the single-user route for one, the query for more.
    pub(super) fn request(&self, nonce: u32) -> String {
        let names = || self.users.iter().map(|u| user_name(nonce, *u));
        let target = match (self.dialect, &self.users[..]) {
            (Dialect::Nchan, [one]) => format!("/sub/{}", user_name(nonce, *one)),
            (Dialect::Nchan, _) => format!("/multi/{}", names().collect::<Vec<_>>().join(",")),
            (Dialect::Heartbeat, [one]) => {
                format!("/subscribe/{}/client/bench", user_name(nonce, *one))
            }
            (Dialect::Heartbeat, many) => {
                let users: Vec<String> = many
                    .iter()
                    .map(|u| format!("user={}", user_name(nonce, *u)))
                    .collect();
                format!("/subscribe?{}", users.join("&"))
            }
        };
        let claim = match &self.watcher {
            Some(watcher) => format!("X-User-Claim: {{\"userid\":\"{watcher}\"}}\r\n"),
            None => String::new(),
        };
        format!("GET {target} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{claim}\r\n")
    }
}

/// One keep-alive connection sending pings.
pub(super) struct Pinger {
    pub(super) socket: TcpStream,
    pub(super) connected: bool,
    /// The request in flight: its number (a ping's, or [`LEAVE`] and the user's for a leave)
    /// and when it was written.
    pub(super) in_flight: Option<(u64, Instant)>,
    pub(super) buf: Vec<u8>,
}

/// Marks a leave's number in [`Pinger::in_flight`].
pub(super) const LEAVE: u64 = 1 << 63;

/// When each ping (by number) and each user's leave (by user) of this run was sent.
pub(super) struct Sent<'a> {
    pub(super) pings: &'a [Option<Instant>],
    pub(super) leaves: &'a [Option<Instant>],
}

pub(super) const PINGER_BASE: usize = 1 << 30;
/// The token of the probe stream.
pub(super) const PROBE: usize = PINGER_BASE - 1;

pub(super) enum StreamState {
    Opened,
    Failed,
    Same,
}

/// Advances a stream: sends its request once connected, reads its head, then its events.
/// With `sent`, records the delivery latency of every event of this run.
pub(super) fn drive_stream(
    stream: &mut Stream,
    nonce: u32,
    seen: &mut Seen,
    sent: Option<&Sent>,
) -> StreamState {
    if stream.requested_at.is_none() {
        if stream.socket.peer_addr().is_err() {
            return StreamState::Same; // still connecting
        }
        if stream
            .socket
            .write_all(stream.request(nonce).as_bytes())
            .is_err()
        {
            return StreamState::Failed;
        }
        stream.requested_at = Some(Instant::now());
    }
    let mut chunk = [0u8; 4096];
    let mut state = StreamState::Same;
    loop {
        match stream.socket.read(&mut chunk) {
            Ok(0) => {
                if !stream.head_done {
                    return StreamState::Failed;
                }
                return state;
            }
            Ok(n) => stream.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                return if stream.head_done {
                    state
                } else {
                    StreamState::Failed
                };
            }
        }
    }
    if !stream.head_done {
        let Some(end) = find(&stream.buf, b"\r\n\r\n") else {
            return StreamState::Same;
        };
        if !stream.buf.starts_with(b"HTTP/1.1 200") {
            return StreamState::Failed;
        }
        stream.head_done = true;
        stream.buf.drain(..end + 4);
        state = StreamState::Opened;
    }
    // Events: take every complete `data: ...\n\n` out of the (chunked) body; chunk framing
    // lines are skipped, as they never start with "data:".
    let now = Instant::now();
    while let Some(end) = find(&stream.buf, b"\n\n") {
        let block: Vec<u8> = stream.buf.drain(..end + 2).collect();
        if find(&block, b"data: ").is_none() {
            continue; // a keepalive
        }
        stream.events += 1;
        let Some(sent) = sent else { continue };
        if find(&block, b"event: offline").is_some() {
            offline(stream, nonce, seen, sent.leaves, &block, now);
            continue;
        }
        let sent_at = sent.pings;
        let Some(at) = find(&block, b"\"status\":\"b") else {
            continue;
        };
        let rest = &block[at + 11..];
        let text = String::from_utf8_lossy(rest);
        let Some((run, id)) = text.split('"').next().and_then(|s| s.split_once('-')) else {
            continue;
        };
        if run != nonce.to_string() {
            continue; // a cached ping of an earlier run
        }
        let id = id.parse::<usize>().ok();
        match id.and_then(|id| Some((id, sent_at.get(id).copied().flatten()?))) {
            Some((id, _)) if !stream.pings.insert(id as u32) => seen.repeated += 1,
            Some((id, sent)) => {
                let latency = now.saturating_duration_since(sent).as_micros() as u32;
                seen.deliveries.push((id as u32, latency));
            }
            None => seen.unexpected += 1,
        }
    }
    state
}

/// Records an offline event of `stream`: its user's, from the data or the stream's one user;
/// its latency from that user's leave.
fn offline(
    stream: &mut Stream,
    nonce: u32,
    seen: &mut Seen,
    leaves: &[Option<Instant>],
    block: &[u8],
    now: Instant,
) {
    let prefix = format!("\"user\":\"bench{nonce}-");
    let user = match &stream.users[..] {
        [one] => Some(*one),
        _ => find(block, prefix.as_bytes()).and_then(|at| {
            let rest = String::from_utf8_lossy(&block[at + prefix.len()..]).into_owned();
            rest.split('"').next()?.parse().ok()
        }),
    };
    match user.and_then(|u| Some((u, leaves.get(u).copied().flatten()?))) {
        Some((user, _)) if !stream.offline.insert(user as u32) => seen.offline_repeated += 1,
        Some((_, left)) => {
            let latency = now.saturating_duration_since(left).as_micros() as u32;
            seen.offline.push(latency);
        }
        None => seen.offline_unexpected += 1,
    }
}

/// Reads complete replies: (answered 200, latency in microseconds, a leave's).
pub(super) fn read_ping_replies(pinger: &mut Pinger) -> Result<Vec<(bool, u32, bool)>, String> {
    let mut chunk = [0u8; 4096];
    loop {
        match pinger.socket.read(&mut chunk) {
            Ok(0) => return Err("a ping connection was closed by the server".into()),
            Ok(n) => pinger.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("a ping connection failed: {e}")),
        }
    }
    let mut replies = Vec::new();
    while let Some(end) = find(&pinger.buf, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&pinger.buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if pinger.buf.len() < end + 4 + length {
            break;
        }
        // heartbeat answers 200; nchan's publisher 201 (or 202 with no subscriber).
        let ok = head.starts_with("http/1.1 20");
        pinger.buf.drain(..end + 4 + length);
        if let Some((number, written)) = pinger.in_flight.take() {
            let leave = number & LEAVE != 0;
            replies.push((ok, written.elapsed().as_micros() as u32, leave));
        }
    }
    Ok(replies)
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
