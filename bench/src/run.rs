//! `heartbeat-bench run`: many event streams in one mio event loop, pings at a fixed rate,
//! and the latency of every delivery. In three phases: open the streams, send the pings
//! while reading the streams, report.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::Options;

/// RSS in KiB and thread count of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

/// One event stream being read.
struct Stream {
    socket: TcpStream,
    /// The users it watches: one by `/subscribe/:userid`, more by `/subscribe?user=...`.
    users: Vec<usize>,
    /// When its request was written.
    requested_at: Option<Instant>,
    head_done: bool,
    buf: Vec<u8>,
    /// Events read, and the pings of this run among them (to find repeats).
    events: usize,
    pings: HashSet<u32>,
}

impl Stream {
    fn new(socket: TcpStream, users: Vec<usize>) -> Stream {
        Stream {
            socket,
            users,
            requested_at: None,
            head_done: false,
            buf: Vec::new(),
            events: 0,
            pings: HashSet::new(),
        }
    }

    /// `GET` of this stream's users: the single-user route for one, the query for more.
    fn request(&self, nonce: u32) -> String {
        let target = match &self.users[..] {
            [one] => format!("/subscribe/{}/client/bench", user_name(nonce, *one)),
            many => {
                let users: Vec<String> = many
                    .iter()
                    .map(|u| format!("user={}", user_name(nonce, *u)))
                    .collect();
                format!("/subscribe?{}", users.join("&"))
            }
        };
        format!("GET {target} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    }
}

/// One keep-alive connection sending pings.
struct Pinger {
    socket: TcpStream,
    connected: bool,
    /// The ping in flight: its number and when it was written.
    in_flight: Option<(u64, Instant)>,
    buf: Vec<u8>,
}

const PINGER_BASE: usize = 1 << 30;
/// The token of the probe stream.
const PROBE: usize = PINGER_BASE - 1;

/// Opens the streams, sends the pings, and reports; fails if a stream was refused, a ping
/// failed or a delivery was lost.
pub fn run(o: &Options) -> Result<(), String> {
    let mut load = Load::new(o)?;
    let before = o.pid.and_then(proc_usage);
    let opened = load.open_streams()?;
    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let after = o.pid.and_then(proc_usage);
    let pings = load.send_pings()?;
    report(o, &opened, before.zip(after), &pings, &load.seen)
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
            nonce: std::process::id(),
        })
    }

    fn user_name(&self, user: usize) -> String {
        user_name(self.nonce, user)
    }

    /// Opens the streams in batches of 500, so the listen backlog is not what is measured.
    fn open_streams(&mut self) -> Result<Opened, String> {
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
                self.streams.push(Stream::new(socket, users));
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
        };
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
                let body = format!(r#"{{"status":"b{}-{next}"}}"#, self.nonce);
                let request = format!(
                    "POST /ping HTTP/1.1\r\nHost: bench\r\nX-User-Claim: {{\"userid\":\"{}\",\"clientid\":\"bench\"}}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    self.user_name(user),
                    body.len()
                );
                let written = Instant::now();
                if let Err(e) = pinger.socket.write_all(request.as_bytes()) {
                    return Err(format!("sending a ping: {e}"));
                }
                pinger.in_flight = Some((next, written));
                sent_at[next as usize] = Some(written);
                pings.expected += self.subscribers[user];
                next += 1;
            }
            if o.probe_users > 0 && probe.is_none() && now >= probe_at {
                probe = Some(self.open_probe()?);
            }
            if next == total
                && finished_at.is_none()
                && pingers.iter().all(|p| p.in_flight.is_none())
            {
                finished_at = Some(Instant::now());
            }
            let probe_done = o.probe_users == 0 || pings.probe.is_some();
            if let Some(done) = finished_at
                && ((self.seen.deliveries.len() as u64 >= pings.expected && probe_done)
                    || done.elapsed() > Duration::from_secs(5))
            {
                break;
            }
            let wait = if next < total {
                (start + interval * next as u32).saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(50)
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
                    for (ok, latency) in read_ping_replies(pinger)? {
                        if ok {
                            pings.latency.push(latency);
                        } else {
                            pings.errors += 1;
                        }
                    }
                } else {
                    let stream = &mut self.streams[token];
                    drive_stream(stream, self.nonce, &mut self.seen, Some(&sent_at));
                }
            }
        }
        pings.stalls = stall_probe.stop();
        Ok(pings)
    }

    /// A connection to the server, registered with the event loop under `token`.
    fn connect(&mut self, token: Token) -> Result<TcpStream, String> {
        let mut socket = TcpStream::connect(self.o.addr).map_err(|e| format!("connect: {e}"))?;
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut socket, token, interest)
            .map_err(|e| e.to_string())?;
        Ok(socket)
    }

    /// The probe: a stream of the first `probe_users` users, pinged early in the run, so each
    /// has a cached ping.
    fn open_probe(&mut self) -> Result<Stream, String> {
        let socket = self.connect(Token(PROBE))?;
        Ok(Stream::new(socket, (0..self.o.probe_users).collect()))
    }

    /// The keep-alive connections pings go out on.
    fn connect_pingers(&mut self) -> Result<Vec<Pinger>, String> {
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

/// The user name for user number `user` of the run with `nonce`.
fn user_name(nonce: u32, user: usize) -> String {
    format!("bench{nonce}-{user}")
}

/// The human report, then `result key=value` lines for scripts/bench.sh.
fn report(
    o: &Options,
    opened: &Opened,
    usage: Option<((u64, u64), (u64, u64))>,
    pings: &Pings,
    seen: &Seen,
) -> Result<(), String> {
    let established = opened.established;
    let rss_per_stream = usage
        .filter(|_| established > 0)
        .map(|((b, _), (a, _))| a.saturating_sub(b) as f64 / established as f64);
    println!(
        "streams: {established} open of {} ({} refused), {} users each, over {} users in {:.2?}",
        o.streams, opened.refused, o.users_per_stream, o.users, opened.took
    );
    if let Some(((rss0, th0), (rss1, th1))) = usage {
        println!(
            "server: RSS {rss0} KiB, {th0} threads before; {rss1} KiB, {th1} threads with the streams open; {:.2} KiB per stream",
            rss_per_stream.unwrap_or(0.0)
        );
    }
    let mut ping_latency = pings.latency.clone();
    let ping_errors = pings.errors;
    let sent = ping_latency.len() as u64 + ping_errors;
    println!(
        "pings: {sent} sent at {}/s over {} s, {} answered 200, {ping_errors} errors, {} sends found no free connection",
        o.rate,
        o.seconds,
        ping_latency.len(),
        pings.late
    );
    println!("ping latency:     {}", summary(&mut ping_latency));
    let mut delivery: Vec<u32> = seen.deliveries.iter().map(|&(_, us)| us).collect();
    println!("delivery latency: {}", summary(&mut delivery));
    let by_second: Vec<String> = p99_by_second(&seen.deliveries, o.rate)
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1000.0))
        .collect();
    println!(
        "delivery p99 by second of the run, ms: {}",
        by_second.join(" ")
    );
    let stalls = &pings.stalls;
    println!("{stalls}");
    if let Some(dir) = &o.plot_data {
        write_plot_data(dir, &seen.deliveries, o.rate)?;
    }
    if let Some(path) = &o.dump {
        let lines: String = seen
            .deliveries
            .iter()
            .map(|(id, us)| format!("{id} {us}\n"))
            .collect();
        std::fs::write(path, lines).map_err(|e| format!("{path}: {e}"))?;
    }
    let expected = pings.expected;
    println!(
        "deliveries: {} received of {expected} expected; {} repeated; {} unexpected",
        delivery.len(),
        seen.repeated,
        seen.unexpected
    );
    if let Some(probe) = pings.probe {
        println!(
            "probe: a new stream of {} users had all their cached pings {:.2?} after its request",
            o.probe_users, probe
        );
    }
    let p = |v: &mut Vec<u32>, q: f64| percentile(v, q);
    println!("result streams_open={established}");
    println!("result open_ms={}", opened.took.as_millis());
    println!("result watches={}", established * o.users_per_stream);
    println!("result deliveries_repeated={}", seen.repeated);
    if o.probe_users > 0 {
        let probe = pings.probe.map_or(-1.0, |p| p.as_secs_f64() * 1000.0);
        println!("result probe_ms={probe:.2}");
    }
    if let Some(((rss0, th0), (rss1, th1))) = usage {
        println!("result rss_before_kib={rss0}");
        println!("result rss_after_kib={rss1}");
        println!("result threads_before={th0}");
        println!("result threads_after={th1}");
        println!(
            "result rss_per_stream_kib={:.2}",
            rss_per_stream.unwrap_or(0.0)
        );
    }
    println!("result pings_ok={}", ping_latency.len());
    println!("result ping_errors={ping_errors}");
    println!("result ping_p99_us={}", p(&mut ping_latency, 0.99));
    println!("result delivery_p50_us={}", p(&mut delivery, 0.50));
    println!("result delivery_p99_us={}", p(&mut delivery, 0.99));
    println!(
        "result delivery_max_us={}",
        delivery.iter().max().unwrap_or(&0)
    );
    println!("result stalls={}", stalls.0.len());
    println!(
        "result stall_longest_us={}",
        stalls
            .0
            .iter()
            .map(|(_, d)| d.as_micros())
            .max()
            .unwrap_or(0)
    );
    println!("result deliveries_expected={expected}");
    println!("result deliveries_received={}", delivery.len());
    if established < o.streams
        || ping_errors > 0
        || (delivery.len() as u64) < expected
        || seen.repeated > 0
        || (o.probe_users > 0 && pings.probe.is_none())
    {
        return Err(
            "streams refused, pings failed, deliveries lost or repeated, or the probe \
             incomplete (see above)"
                .into(),
        );
    }
    Ok(())
}

/// A thread that sleeps 1 ms at a time and notes how late it wakes. The server cannot delay
/// it (a thread waking from sleep gets a core within a few ms however many are runnable), so
/// a late wake-up at the same moment as a delivery tail means the machine itself stalled: the
/// hypervisor did not run the VM, or the kernel was busy with itself.
struct StallProbe {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(Duration, Duration)>>,
}

/// How late the probe's wake-ups were.
struct Stalls(Vec<(Duration, Duration)>);

/// A wake-up later than this is a stall.
const STALL: Duration = Duration::from_millis(10);

impl StallProbe {
    fn start(origin: Instant) -> StallProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut late = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let before = Instant::now();
                thread::sleep(Duration::from_millis(1));
                let overshoot = before.elapsed().saturating_sub(Duration::from_millis(1));
                if overshoot >= STALL {
                    late.push((before.duration_since(origin), overshoot));
                }
            }
            late
        });
        StallProbe { stop, thread }
    }

    fn stop(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        Stalls(self.thread.join().unwrap_or_default())
    }
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((at, longest)) = self.0.iter().max_by_key(|(_, d)| *d) else {
            return write!(
                f,
                "machine stalls: none (no 1 ms sleep woke {STALL:?} late)"
            );
        };
        let total: Duration = self.0.iter().map(|(_, d)| *d).sum();
        write!(
            f,
            "machine stalls: {} sleeps of 1 ms woke over {STALL:?} late, {:.1} ms in all; the longest {:.1} ms at {:.2} s into the pings",
            self.0.len(),
            total.as_secs_f64() * 1000.0,
            longest.as_secs_f64() * 1000.0,
            at.as_secs_f64()
        )
    }
}

/// Deliveries seen on the streams.
#[derive(Default)]
struct Seen {
    /// Every delivery as (ping number, latency in microseconds).
    deliveries: Vec<(u32, u32)>,
    /// Events of this run for a ping never sent.
    unexpected: u64,
    /// Events of this run that a stream had already received.
    repeated: u64,
}

/// The delivery p99 of the pings sent in each second of the run, in microseconds, to show
/// when a tail happens (for instance only just after the streams opened).
fn p99_by_second(deliveries: &[(u32, u32)], rate: u32) -> Vec<u32> {
    by_second(deliveries, rate)
        .iter_mut()
        .map(|v| percentile(v, 0.99))
        .collect()
}

/// The delivery latencies of the pings sent in each second of the run.
fn by_second(deliveries: &[(u32, u32)], rate: u32) -> Vec<Vec<u32>> {
    let mut seconds: Vec<Vec<u32>> = Vec::new();
    for &(ping, us) in deliveries {
        let second = (ping / rate.max(1)) as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Vec::new);
        }
        seconds[second].push(us);
    }
    seconds
}

/// Writes the data scripts/plot.gp draws into `dir`: `by_second.dat` (second, p50, p99 and
/// max in ms) and `distribution.dat` (latency in ms, fraction of deliveries slower), one line
/// per 1/1000 of the deliveries and every one of the slowest thousand.
fn write_plot_data(dir: &str, deliveries: &[(u32, u32)], rate: u32) -> Result<(), String> {
    use std::fmt::Write as _;
    let ms = |us: u32| f64::from(us) / 1000.0;
    let mut text = String::from("# second p50_ms p99_ms max_ms\n");
    for (second, mut v) in by_second(deliveries, rate).into_iter().enumerate() {
        let max = v.iter().copied().max().unwrap_or(0);
        let (p50, p99) = (percentile(&mut v, 0.5), percentile(&mut v, 0.99));
        let _ = writeln!(text, "{second} {} {} {}", ms(p50), ms(p99), ms(max));
    }
    let write = |name: &str, text: &str| {
        let path = format!("{dir}/{name}");
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))
    };
    write("by_second.dat", &text)?;
    let mut all: Vec<u32> = deliveries.iter().map(|&(_, us)| us).collect();
    all.sort_unstable();
    let n = all.len();
    let mut text = String::from("# latency_ms fraction_slower\n");
    let step = (n / 1000).max(1);
    for (i, us) in all.iter().enumerate() {
        if i % step == 0 || i + 1000 >= n {
            let slower = (n - i - 1) as f64 / n as f64;
            let _ = writeln!(text, "{} {}", ms(*us), slower.max(0.5 / n as f64));
        }
    }
    write("distribution.dat", &text)
}

enum StreamState {
    Opened,
    Failed,
    Same,
}

/// Advances a stream: sends its request once connected, reads its head, then its events.
/// With `sent_at`, records the delivery latency of every event of this run.
fn drive_stream(
    stream: &mut Stream,
    nonce: u32,
    seen: &mut Seen,
    sent_at: Option<&[Option<Instant>]>,
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
        let Some(sent_at) = sent_at else { continue };
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

/// Reads complete ping replies: (answered 200, latency in microseconds).
fn read_ping_replies(pinger: &mut Pinger) -> Result<Vec<(bool, u32)>, String> {
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
        let ok = head.starts_with("http/1.1 200");
        pinger.buf.drain(..end + 4 + length);
        if let Some((_, written)) = pinger.in_flight.take() {
            replies.push((ok, written.elapsed().as_micros() as u32));
        }
    }
    Ok(replies)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percentile(values: &mut [u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn summary(values: &mut [u32]) -> String {
    if values.is_empty() {
        return "no samples".into();
    }
    let ms = |us: u32| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(values, 0.50)),
        ms(percentile(values, 0.90)),
        ms(percentile(values, 0.99)),
        ms(*values.iter().max().unwrap()),
        values.len()
    )
}
