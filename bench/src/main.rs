//! heartbeat-bench: load for a running heartbeat, from one process.
//!
//! - `run`: opens N event streams over U users in one mio event loop (no thread per
//!   connection), reads the server's RSS and threads from /proc before and after, then sends
//!   pings at a fixed rate over a few keep-alive connections and reports ping latency,
//!   delivery latency (ping sent to event read, at every subscriber of the user, also as a
//!   p99 per second of the run) and deliveries expected against received. A probe thread
//!   meanwhile notes when the machine itself stalls, to tell its hiccups from the server's.
//! - `hello`: the HTTP ceiling: heartbeat's own HTTP layer and thread-per-connection accept
//!   loop answering every request with a constant, no store behind it.
//! - `startup`: spawns a command and reports how long until `/healthz` answers 200.
//! - `record-script`: prints the Lua script a ping runs in Redis, for redis-benchmark.
//!
//! Output is a human report plus `key=value` lines that scripts/bench.sh collects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => Options::parse(&args[1..]).and_then(|o| run(&o)),
        Some("hello") => hello(args.get(1).map_or("127.0.0.1:0", String::as_str)),
        Some("startup") if args.len() > 2 => startup(&args[1], &args[2..]),
        Some("record-script") => {
            print!("{}", heartbeat::store::redis::schema::RECORD_SCRIPT);
            Ok(())
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage:
  heartbeat-bench run --addr HOST:PORT [--pid PID] [--streams N] [--users U] [--rate PINGS_PER_S]
                      [--seconds S] [--ping-connections C] [--settle S]
                      [--dump FILE]
  heartbeat-bench hello [HOST:PORT]
  heartbeat-bench startup HOST:PORT COMMAND [ARGS...]
  heartbeat-bench record-script";

struct Options {
    addr: SocketAddr,
    pid: Option<u32>,
    streams: usize,
    users: usize,
    rate: u32,
    seconds: u64,
    ping_connections: usize,
    /// Seconds between the last stream opening and the first ping.
    settle: f64,
    /// Where to write every delivery as `ping latency_us`, for a closer look at a tail.
    dump: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            addr: "127.0.0.1:8080".parse().unwrap(),
            pid: None,
            streams: 1000,
            users: 100,
            rate: 1000,
            seconds: 10,
            ping_connections: 16,
            settle: 1.0,
            dump: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--addr" => {
                    o.addr = value
                        .to_socket_addrs()
                        .map_err(|e| bad(&e))?
                        .next()
                        .ok_or_else(|| bad(&"no address"))?
                }
                "--pid" => o.pid = Some(value.parse().map_err(|e| bad(&e))?),
                "--streams" => o.streams = value.parse().map_err(|e| bad(&e))?,
                "--users" => o.users = value.parse().map_err(|e| bad(&e))?,
                "--rate" => o.rate = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => o.seconds = value.parse().map_err(|e| bad(&e))?,
                "--ping-connections" => o.ping_connections = value.parse().map_err(|e| bad(&e))?,
                "--settle" => o.settle = value.parse().map_err(|e| bad(&e))?,
                "--dump" => o.dump = Some(value.clone()),
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        if o.users == 0 || o.rate == 0 || o.ping_connections == 0 {
            return Err("--users, --rate and --ping-connections must be above 0".into());
        }
        Ok(o)
    }
}

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
    user: usize,
    sent_request: bool,
    head_done: bool,
    buf: Vec<u8>,
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

fn run(o: &Options) -> Result<(), String> {
    let nonce = std::process::id();
    let user_name = |u: usize| format!("bench{nonce}-{u}");
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(4096);

    let before = o.pid.and_then(proc_usage);
    // Open the streams in batches, so the listen backlog is not what is measured.
    let mut streams: Vec<Stream> = Vec::with_capacity(o.streams);
    let mut subscribers = vec![0u64; o.users];
    let opening = Instant::now();
    let mut established = 0;
    let mut refused = 0;
    let mut seen = Seen::default();
    while established + refused < o.streams {
        let target = (streams.len() + 500).min(o.streams);
        while streams.len() < target {
            let i = streams.len();
            let mut socket = TcpStream::connect(o.addr).map_err(|e| format!("connect: {e}"))?;
            poll.registry()
                .register(
                    &mut socket,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| e.to_string())?;
            streams.push(Stream {
                socket,
                user: i % o.users,
                sent_request: false,
                head_done: false,
                buf: Vec::new(),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while established + refused < streams.len() {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {established} of {} streams opened within 30 s",
                    streams.len()
                ));
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            for event in &events {
                let stream = &mut streams[event.token().0];
                match drive_stream(stream, &user_name, &mut seen, None) {
                    StreamState::Opened => {
                        established += 1;
                        subscribers[stream.user] += 1;
                    }
                    StreamState::Failed => refused += 1,
                    StreamState::Same => {}
                }
            }
        }
    }
    let open_time = opening.elapsed();
    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let after = o.pid.and_then(proc_usage);

    // Pings at a fixed rate, each to the next user, on whichever connection is free.
    let mut pingers: Vec<Pinger> = Vec::new();
    for i in 0..o.ping_connections {
        let mut socket = TcpStream::connect(o.addr).map_err(|e| format!("connect: {e}"))?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        poll.registry()
            .register(
                &mut socket,
                Token(PINGER_BASE + i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        pingers.push(Pinger {
            socket,
            connected: false,
            in_flight: None,
            buf: Vec::new(),
        });
    }
    let total = o.rate as u64 * o.seconds;
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let mut sent_at: Vec<Option<Instant>> = vec![None; total as usize];
    let mut ping_latency = Vec::with_capacity(total as usize);
    let mut ping_errors = 0u64;
    let mut late = 0u64;
    let mut expected = 0u64;
    let mut next = 0u64;
    let start = Instant::now();
    let probe = StallProbe::start(start);
    let mut finished_at: Option<Instant> = None;
    seen.deliveries
        .reserve(total as usize * (o.streams / o.users.max(1) + 1));
    loop {
        let now = Instant::now();
        // Send what is due.
        while next < total && start + interval * next as u32 <= now {
            let Some(pinger) = pingers
                .iter_mut()
                .find(|p| p.connected && p.in_flight.is_none())
            else {
                late += 1;
                break;
            };
            let user = (next % o.users as u64) as usize;
            let body = format!(r#"{{"status":"b{nonce}-{next}"}}"#);
            let request = format!(
                "POST /ping HTTP/1.1\r\nHost: bench\r\nX-User-Claim: {{\"userid\":\"{}\",\"clientid\":\"bench\"}}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                user_name(user),
                body.len()
            );
            let written = Instant::now();
            if let Err(e) = pinger.socket.write_all(request.as_bytes()) {
                return Err(format!("sending a ping: {e}"));
            }
            pinger.in_flight = Some((next, written));
            sent_at[next as usize] = Some(written);
            expected += subscribers[user];
            next += 1;
        }
        if next == total && finished_at.is_none() && pingers.iter().all(|p| p.in_flight.is_none()) {
            finished_at = Some(Instant::now());
        }
        if let Some(done) = finished_at
            && (seen.deliveries.len() as u64 >= expected || done.elapsed() > Duration::from_secs(5))
        {
            break;
        }
        let wait = if next < total {
            (start + interval * next as u32).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(50)
        };
        poll.poll(&mut events, Some(wait.max(Duration::from_micros(100))))
            .map_err(|e| e.to_string())?;
        for event in &events {
            let token = event.token().0;
            if token >= PINGER_BASE {
                let pinger = &mut pingers[token - PINGER_BASE];
                pinger.connected = true;
                for (ok, latency) in read_ping_replies(pinger)? {
                    if ok {
                        ping_latency.push(latency);
                    } else {
                        ping_errors += 1;
                    }
                }
            } else {
                drive_stream(&mut streams[token], &user_name, &mut seen, Some(&sent_at));
            }
        }
    }

    let stalls = probe.stop();
    let rss_per_stream = match (before, after) {
        (Some((b, _)), Some((a, _))) if established > 0 => {
            Some(a.saturating_sub(b) as f64 / established as f64)
        }
        _ => None,
    };
    println!(
        "streams: {established} open of {} ({refused} refused) over {} users in {:.2?}",
        o.streams, o.users, open_time
    );
    if let (Some((rss0, th0)), Some((rss1, th1))) = (before, after) {
        println!(
            "server: RSS {rss0} KiB, {th0} threads before; {rss1} KiB, {th1} threads with the streams open; {:.2} KiB per stream",
            rss_per_stream.unwrap_or(0.0)
        );
    }
    let sent = ping_latency.len() as u64 + ping_errors;
    println!(
        "pings: {sent} sent at {}/s over {} s, {} answered 200, {ping_errors} errors, {late} sends found no free connection",
        o.rate,
        o.seconds,
        ping_latency.len()
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
    println!("{stalls}");
    if let Some(path) = &o.dump {
        let lines: String = seen
            .deliveries
            .iter()
            .map(|(id, us)| format!("{id} {us}\n"))
            .collect();
        std::fs::write(path, lines).map_err(|e| format!("{path}: {e}"))?;
    }
    println!(
        "deliveries: {} received of {expected} expected; {} unexpected",
        delivery.len(),
        seen.unexpected
    );
    // Machine-readable lines for scripts/bench.sh.
    let p = |v: &mut Vec<u32>, q: f64| percentile(v, q);
    println!("result streams_open={established}");
    if let (Some((rss0, th0)), Some((rss1, th1))) = (before, after) {
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
    if established < o.streams || ping_errors > 0 || (delivery.len() as u64) < expected {
        return Err("streams refused, pings failed or deliveries lost (see above)".into());
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
    /// Events of this run that arrived twice or for a ping never sent.
    unexpected: u64,
}

/// The delivery p99 of the pings sent in each second of the run, in microseconds, to show
/// when a tail happens (for instance only just after the streams opened).
fn p99_by_second(deliveries: &[(u32, u32)], rate: u32) -> Vec<u32> {
    let mut seconds: Vec<Vec<u32>> = Vec::new();
    for &(ping, us) in deliveries {
        let second = (ping / rate.max(1)) as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Vec::new);
        }
        seconds[second].push(us);
    }
    seconds.iter_mut().map(|v| percentile(v, 0.99)).collect()
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
    user_name: &dyn Fn(usize) -> String,
    seen: &mut Seen,
    sent_at: Option<&[Option<Instant>]>,
) -> StreamState {
    if !stream.sent_request {
        if stream.socket.peer_addr().is_err() {
            return StreamState::Same; // still connecting
        }
        let request = format!(
            "GET /subscribe/{}/client/bench HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
            user_name(stream.user)
        );
        if stream.socket.write_all(request.as_bytes()).is_err() {
            return StreamState::Failed;
        }
        stream.sent_request = true;
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
        let Some(sent_at) = sent_at else { continue };
        let Some(at) = find(&block, b"\"status\":\"b") else {
            continue;
        };
        let rest = &block[at + 11..];
        let text = String::from_utf8_lossy(rest);
        let Some((nonce, id)) = text.split('"').next().and_then(|s| s.split_once('-')) else {
            continue;
        };
        if nonce != std::process::id().to_string() {
            continue; // a cached ping of an earlier run
        }
        let id = id.parse::<usize>().ok();
        match id.and_then(|id| Some((id, sent_at.get(id).copied().flatten()?))) {
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

/// The HTTP ceiling: heartbeat's accept loop shape and HTTP layer, answering a constant.
fn hello(listen: &str) -> Result<(), String> {
    use heartbeat::config::Limits;
    use heartbeat::http::{ReadError, RequestReader, Response, Timeouts};
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    println!(
        "hello listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let limits = Limits::default();
    let timeouts = Timeouts {
        idle: Duration::from_secs(120),
        request: Duration::from_secs(10),
    };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = std::thread::Builder::new()
            .stack_size(heartbeat::server::STACK_SIZE)
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = RequestReader::new();
                loop {
                    match reader.read(&mut stream, &limits, &timeouts) {
                        Ok(request) => {
                            let keep_alive = request.keep_alive();
                            if Response::empty(200)
                                .write_to(&mut stream, keep_alive)
                                .is_err()
                                || !keep_alive
                            {
                                return;
                            }
                        }
                        Err(ReadError::Reject(response)) => {
                            let _ = response.write_to(&mut stream, false);
                            return;
                        }
                        Err(_) => return,
                    }
                }
            });
    }
    Ok(())
}

/// Spawns `command` and reports the time until `GET /healthz` on `addr` answers 200.
fn startup(addr: &str, command: &[String]) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let started = Instant::now();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .map_err(|e| format!("{}: {e}", command[0]))?;
    let result = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break Err("no 200 from /healthz within 5 s".to_owned());
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                break Ok(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    let ready = result?;
    println!(
        "ready: /healthz answered 200 {:.1} ms after spawn",
        ready.as_secs_f64() * 1000.0
    );
    println!("result ready_ms={:.1}", ready.as_secs_f64() * 1000.0);
    Ok(())
}
