//! `heartbeat-bench run`: many event streams in one mio event loop, pings at a fixed rate,
//! and the latency of every delivery. In three phases: open the streams, send the pings
//! while reading the streams, report.

use std::io::Write;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use self::report::{Seen, report};
use self::stall::{StallProbe, Stalls};
use self::usage::{cpu_micros, mem_available_kib, proc_usage};
use self::wire::{LEAVE, PINGER_BASE, PROBE, Sent, Stream, drive_stream, read_ping_replies};

/// How long after its ping a user leaves, with --leave.
const LEAVE_LAG: Duration = Duration::from_millis(500);
use crate::{Dialect, Options};

mod open;
mod report;
mod stall;
mod terminate;
mod usage;
mod wire;

/// Opens the streams, sends the pings, and reports; fails if a stream was refused, a ping
/// failed or a delivery was lost. Besides the server's RSS, it reports the machine's memory
/// per stream (MemAvailable before and after the streams opened: the server's and this
/// load's sockets, the kernel's stacks and page tables, everything) and the server's CPU
/// time per delivery while the pings went out.
pub fn run(o: &Options) -> Result<(), String> {
    let mut load = Load::new(o)?;
    let before = o.pid.and_then(proc_usage);
    let available_before = mem_available_kib();
    let opened = load.open_streams()?;
    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let after = o.pid.and_then(proc_usage);
    let available_after = mem_available_kib();
    let cpu_before = o.pid.and_then(cpu_micros);
    let pings = load.send_pings()?;
    let cpu = cpu_before.zip(o.pid.and_then(cpu_micros));
    if let (Some((b, a)), n @ 1..) = (available_before.zip(available_after), opened.established) {
        let per_stream = b.saturating_sub(a) as f64 / n as f64;
        println!(
            "machine: MemAvailable {b} KiB before, {a} KiB with the streams open: {per_stream:.2} KiB per stream"
        );
        println!("result machine_kib_per_stream={per_stream:.2}");
    }
    if let (Some((b, a)), n @ 1..) = (cpu, load.seen.deliveries.len()) {
        let per_delivery = a.saturating_sub(b) as f64 / n as f64;
        println!(
            "server CPU: {} ms while pinging, {per_delivery:.2} us per delivery",
            (a - b) / 1000
        );
        println!("result server_cpu_us_per_delivery={per_delivery:.2}");
    }
    let result = report(o, &opened, before.zip(after), &pings, &load.seen);
    if let (true, Some(pid)) = (o.terminate, o.pid) {
        let done = load.terminate(pid)?;
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        println!(
            "SIGTERM: {} of {} streams closed, the last {:.0} ms after it; the process exited after {:.0} ms",
            done.closed,
            opened.established,
            ms(done.last_closed),
            ms(done.exited)
        );
        println!("result term_closed={}", done.closed);
        println!("result term_last_closed_ms={:.0}", ms(done.last_closed));
        println!("result term_exited_ms={:.0}", ms(done.exited));
        if done.closed < opened.established || done.exited.is_none() {
            return Err("SIGTERM did not end every stream and the process within 20 s".into());
        }
    }
    result
}

/// The event loop, its streams, and what they have seen.
struct Load<'a> {
    o: &'a Options,
    poll: Poll,
    events: Events,
    streams: Vec<Stream>,
    /// Streams open per user, for the deliveries each ping should make.
    subscribers: Vec<u64>,
    seen: Seen,
    /// Distinguishes this run's users and statuses from an earlier run's.
    nonce: u32,
    /// Connections made, for the next one's source address.
    connections: usize,
}

/// How the streams opened.
struct Opened {
    established: usize,
    refused: usize,
    took: Duration,
}

/// What the pings did.
struct Pings {
    /// How long the probe stream took from its request to its last cached ping.
    probe: Option<Duration>,
    /// Latency of every ping answered 200, in microseconds.
    latency: Vec<u32>,
    errors: u64,
    /// Sends that found no free connection at their time.
    late: u64,
    /// Deliveries the pings should have made.
    expected: u64,
    stalls: Stalls,
    /// Leaves sent and refused, and the offline events they should have made.
    leaves: u64,
    leave_errors: u64,
    offline_expected: u64,
}

impl Load<'_> {
    fn new(o: &Options) -> Result<Load<'_>, String> {
        Ok(Load {
            o,
            poll: Poll::new().map_err(|e| e.to_string())?,
            events: Events::with_capacity(4096),
            streams: Vec::with_capacity(o.streams),
            subscribers: vec![0; o.users],
            seen: Seen::default(),
            nonce: o.nonce.unwrap_or_else(std::process::id),
            connections: 0,
        })
    }

    fn user_name(&self, user: usize) -> String {
        user_name(self.nonce, user)
    }

    /// Ping number `n`, of `user`: to heartbeat a `POST /ping` as the user, to nchan the
    /// event heartbeat would send, published to the user's channel.
    fn ping_request(&self, user: usize, n: u64) -> String {
        let status = format!("b{}-{n}", self.nonce);
        let (target, claim, body) = match self.o.dialect {
            Dialect::Heartbeat => (
                "/ping".to_owned(),
                format!(
                    "X-User-Claim: {{\"userid\":\"{}\",\"clientid\":\"bench\"}}\r\n",
                    self.user_name(user)
                ),
                format!(r#"{{"status":"{status}"}}"#),
            ),
            Dialect::Nchan => {
                let time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let target = format!("/pub/{}", self.user_name(user));
                (
                    target,
                    String::new(),
                    format!(r#"{{"time":{time},"status":"{status}"}}"#),
                )
            }
        };
        format!(
            "POST {target} HTTP/1.1\r\nHost: bench\r\n{claim}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Sends pings at a fixed rate, each to the next user, on whichever connection is free,
    /// while reading the streams; ends when every expected delivery came, or 5 s after the
    /// last answer.
    fn send_pings(&mut self) -> Result<Pings, String> {
        let o = self.o;
        let mut pingers = self.connect_pingers()?;
        let total = o.rate as u64 * o.seconds;
        let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
        let mut sent_at: Vec<Option<Instant>> = vec![None; total as usize];
        let mut pings = Pings {
            probe: None,
            latency: Vec::with_capacity(total as usize),
            errors: 0,
            late: 0,
            expected: 0,
            stalls: Stalls(Vec::new()),
            leaves: 0,
            leave_errors: 0,
            offline_expected: 0,
        };
        // With --leave, each ping's user leaves LEAVE_LAG after it: as many leaves a second
        // as pings, each an offline event for every stream watching the user.
        let mut leaves_due: std::collections::VecDeque<(Instant, usize)> = Default::default();
        let mut left_at: Vec<Option<Instant>> = vec![None; o.users];
        let mut next = 0u64;
        let start = Instant::now();
        let stall_probe = StallProbe::start(start);
        let mut finished_at: Option<Instant> = None;
        self.seen
            .deliveries
            .reserve(total as usize * (o.streams * o.users_per_stream / o.users + 1));
        let mut probe: Option<Stream> = None;
        let probe_at = start + Duration::from_secs_f64(o.seconds as f64 / 2.0);
        loop {
            let now = Instant::now();
            // Send what is due.
            while next < total && start + interval * next as u32 <= now {
                let Some(pinger) = pingers
                    .iter_mut()
                    .find(|p| p.connected && p.in_flight.is_none())
                else {
                    pings.late += 1;
                    break;
                };
                let user = (next % o.users as u64) as usize;
                let request = self.ping_request(user, next);
                let written = Instant::now();
                if let Err(e) = pinger.socket.write_all(request.as_bytes()) {
                    return Err(format!("sending a ping: {e}"));
                }
                pinger.in_flight = Some((next, written));
                sent_at[next as usize] = Some(written);
                pings.expected += self.subscribers[user];
                next += 1;
                if o.leave {
                    leaves_due.push_back((written + LEAVE_LAG, user));
                }
                if o.expire_secs > 0 {
                    left_at[user] = Some(written + Duration::from_secs(o.expire_secs));
                    pings.offline_expected += self.subscribers[user];
                }
            }
            while let Some(&(due, user)) = leaves_due.front() {
                let free = pingers
                    .iter_mut()
                    .find(|p| p.connected && p.in_flight.is_none());
                let (true, Some(pinger)) = (due <= now, free) else {
                    break;
                };
                let request = format!(
                    "POST /leave HTTP/1.1\r\nHost: bench\r\nX-User-Claim: {{\"userid\":\"{}\",\"clientid\":\"bench\"}}\r\n\
                     Content-Length: 0\r\n\r\n",
                    self.user_name(user)
                );
                let written = Instant::now();
                if let Err(e) = pinger.socket.write_all(request.as_bytes()) {
                    return Err(format!("sending a leave: {e}"));
                }
                pinger.in_flight = Some((LEAVE | user as u64, written));
                left_at[user] = Some(written);
                pings.leaves += 1;
                pings.offline_expected += self.subscribers[user];
                leaves_due.pop_front();
            }
            if o.probe_users > 0 && probe.is_none() && now >= probe_at {
                probe = Some(self.open_probe()?);
            }
            if next == total
                && leaves_due.is_empty()
                && finished_at.is_none()
                && pingers.iter().all(|p| p.in_flight.is_none())
            {
                finished_at = Some(Instant::now());
            }
            let probe_done = o.probe_users == 0 || pings.probe.is_some();
            if let Some(done) = finished_at
                && ((self.seen.deliveries.len() as u64 >= pings.expected
                    && self.seen.offline.len() as u64 >= pings.offline_expected
                    && probe_done)
                    || done.elapsed() > Duration::from_secs(5 + o.expire_secs))
            {
                break;
            }
            let wait = match leaves_due.front() {
                Some(&(due, _)) => due.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(50),
            };
            let wait = if next < total {
                let ping = start + interval * next as u32;
                wait.min(ping.saturating_duration_since(Instant::now()))
            } else {
                wait
            };
            self.poll
                .poll(&mut self.events, Some(wait.max(Duration::from_micros(100))))
                .map_err(|e| e.to_string())?;
            for event in &self.events {
                let token = event.token().0;
                if token == PROBE {
                    let Some(stream) = probe.as_mut() else {
                        continue;
                    };
                    let mut ignored = Seen::default();
                    drive_stream(stream, self.nonce, &mut ignored, None);
                    if pings.probe.is_none() && stream.events >= o.probe_users {
                        let asked = stream.requested_at.expect("events after the request");
                        pings.probe = Some(asked.elapsed());
                    }
                } else if token >= PINGER_BASE {
                    let pinger = &mut pingers[token - PINGER_BASE];
                    pinger.connected = true;
                    for (ok, latency, leave) in read_ping_replies(pinger)? {
                        match (ok, leave) {
                            (true, false) => pings.latency.push(latency),
                            (false, false) => pings.errors += 1,
                            (true, true) => {}
                            (false, true) => pings.leave_errors += 1,
                        }
                    }
                } else {
                    let stream = &mut self.streams[token];
                    let sent = Sent {
                        pings: &sent_at,
                        leaves: &left_at,
                    };
                    drive_stream(stream, self.nonce, &mut self.seen, Some(&sent));
                }
            }
        }
        pings.stalls = stall_probe.stop();
        Ok(pings)
    }
}

/// The user name for user number `user` of the run with `nonce`.
fn user_name(nonce: u32, user: usize) -> String {
    format!("bench{nonce}-{user}")
}
