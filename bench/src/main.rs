//! heartbeat-bench: load for a running heartbeat, from one process.
//!
//! - `run`: opens N event streams over U users in one mio event loop (no thread per
//!   connection), reads the server's RSS and threads from /proc before and after, then sends
//!   pings at a fixed rate over a few keep-alive connections and reports ping latency,
//!   delivery latency (ping sent to event read, at every subscriber of the user, also as a
//!   p99 per second of the run) and deliveries expected against received and repeated. With
//!   `--users-per-stream K` each stream watches K users on one `/subscribe?user=...`
//!   stream; with `--probe-users P` one more stream of P users opens halfway and reports how
//!   long its cached pings took; with `--leave` each ping's user leaves half a second after
//!   it, and every stream's offline events are counted (lost, repeated) and timed from the
//!   leave; with `--expire-secs S` (the server's DEVICE_TTL_SECS) each user is left to expire
//!   instead, and the offline events are timed from the ping plus S; with `--claims` each
//!   stream claims a watcher of its own (`WATCH_POLICY` claimed or contacts). A probe thread
//!   meanwhile notes when the machine itself stalls, to tell its hiccups from the server's.
//! - `hello`: the HTTP ceiling: heartbeat's own HTTP layer and thread-per-connection accept
//!   loop answering every request with a constant, no store behind it.
//! - `startup`: spawns a command and reports how long until `/healthz` answers 200.
//! - `presence-memory`: what the offline timers cost per watched user, measured with the hub
//!   in this process by a counting allocator.
//! - `record-script`: prints the Lua script a ping runs in Redis (with the default presence
//!   rules), for redis-benchmark.
//!
//! Output is a human report plus `key=value` lines that scripts/bench.sh collects.

mod memory;
mod run;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => Options::parse(&args[1..]).and_then(|o| run::run(&o)),
        Some("hello") => hello(args.get(1).map_or("127.0.0.1:0", String::as_str)),
        Some("startup") if args.len() > 2 => startup(&args[1], &args[2..]),
        Some("presence-memory") => match args.get(1).map(|n| n.parse()) {
            Some(Ok(users)) => memory::presence_memory(users),
            _ => Err(USAGE.to_owned()),
        },
        Some("record-script") => {
            let rules = heartbeat::presence::Rules::default();
            print!(
                "{}",
                heartbeat::store::redis::script::RecordScript::new(&rules).text
            );
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
                      [--users-per-stream K] [--probe-users P] [--leave | --expire-secs S]
                      [--claims] [--nonce N] [--dialect heartbeat|nchan] [--sources N]
                      [--terminate]
                      [--dump FILE]
                      [--plot-data DIR]
  heartbeat-bench hello [HOST:PORT]
  heartbeat-bench startup HOST:PORT COMMAND [ARGS...]
  heartbeat-bench presence-memory USERS
  heartbeat-bench record-script";

/// Whose routes the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `GET /subscribe/...`, `POST /ping` with the user in `X-User-Claim`.
    Heartbeat,
    /// nchan's (`../shared/peers/nchan-conf.sh`): `GET /sub/<user>` or
    /// `GET /multi/<u1>,<u2>,...`, and `POST /pub/<user>` with the event's JSON as the body.
    Nchan,
}

pub struct Options {
    pub addr: SocketAddr,
    pub dialect: Dialect,
    /// Client sockets are spread over the loopback source addresses 127.0.0.1 to 127.0.0.N:
    /// one source address has only about 28,000 ephemeral ports for one server port.
    pub sources: u8,
    pub pid: Option<u32>,
    pub streams: usize,
    pub users: usize,
    pub rate: u32,
    pub seconds: u64,
    pub ping_connections: usize,
    /// Seconds between the last stream opening and the first ping.
    pub settle: f64,
    /// Users each stream watches: 1 by `/subscribe/:userid`, more by `/subscribe?user=...`.
    pub users_per_stream: usize,
    /// If above 0: halfway through the pings, open one more stream of this many users (all
    /// with a cached ping) and time how long until it has all their cached pings.
    pub probe_users: usize,
    /// Each ping's user leaves half a second after it (`POST /leave`), and the offline events
    /// are counted like deliveries.
    pub leave: bool,
    /// The server's DEVICE_TTL_SECS, when each ping's user is left to expire: its offline
    /// events are counted like deliveries and timed from the ping plus this.
    pub expire_secs: u64,
    /// Where to write every delivery as `ping latency_us`, for a closer look at a tail.
    pub dump: Option<String>,
    /// A directory for the data scripts/plot.gp draws.
    pub plot_data: Option<String>,
    /// Each stream claims a watcher of its own (`X-User-Claim: {"userid":"watcher-<i>"}`),
    /// for a server under `WATCH_POLICY` `claimed` or `contacts`.
    pub claims: bool,
    /// The run's users are `bench<nonce>-<n>`; by default the nonce is this process's id, and
    /// a script that must prepare the users (their contact sets) sets it.
    pub nonce: Option<u32>,
    /// After the pings, send SIGTERM to `--pid` with the streams open, and time how long
    /// until they have all closed and the process has exited.
    pub terminate: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            addr: "127.0.0.1:8080".parse().unwrap(),
            dialect: Dialect::Heartbeat,
            sources: 1,
            pid: None,
            streams: 1000,
            users: 100,
            rate: 1000,
            seconds: 10,
            ping_connections: 16,
            settle: 1.0,
            users_per_stream: 1,
            probe_users: 0,
            leave: false,
            expire_secs: 0,
            dump: None,
            plot_data: None,
            claims: false,
            nonce: None,
            terminate: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if ["--leave", "--claims", "--terminate"].contains(&flag.as_str()) {
                o.leave |= flag == "--leave";
                o.claims |= flag == "--claims";
                o.terminate |= flag == "--terminate";
                continue;
            }
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
                "--dialect" => {
                    o.dialect = match value.as_str() {
                        "heartbeat" => Dialect::Heartbeat,
                        "nchan" => Dialect::Nchan,
                        _ => return Err(bad(&"heartbeat or nchan")),
                    }
                }
                "--sources" => o.sources = value.parse().map_err(|e| bad(&e))?,
                "--pid" => o.pid = Some(value.parse().map_err(|e| bad(&e))?),
                "--streams" => o.streams = value.parse().map_err(|e| bad(&e))?,
                "--users" => o.users = value.parse().map_err(|e| bad(&e))?,
                "--rate" => o.rate = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => o.seconds = value.parse().map_err(|e| bad(&e))?,
                "--ping-connections" => o.ping_connections = value.parse().map_err(|e| bad(&e))?,
                "--settle" => o.settle = value.parse().map_err(|e| bad(&e))?,
                "--users-per-stream" => o.users_per_stream = value.parse().map_err(|e| bad(&e))?,
                "--probe-users" => o.probe_users = value.parse().map_err(|e| bad(&e))?,
                "--expire-secs" => o.expire_secs = value.parse().map_err(|e| bad(&e))?,
                "--dump" => o.dump = Some(value.clone()),
                "--nonce" => o.nonce = Some(value.parse().map_err(|e| bad(&e))?),
                "--plot-data" => o.plot_data = Some(value.clone()),
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        if o.users == 0 || o.rate == 0 || o.ping_connections == 0 || o.users_per_stream == 0 {
            return Err(
                "--users, --rate, --ping-connections and --users-per-stream must be above 0".into(),
            );
        }
        if o.users_per_stream > o.users || o.probe_users > o.users {
            return Err("--users-per-stream and --probe-users must not exceed --users".into());
        }
        let offline = o.leave || o.expire_secs > 0;
        if offline && (o.users as u64) < o.rate as u64 * o.seconds {
            return Err(
                "--leave and --expire-secs need --users of at least --rate times \
                 --seconds: each user pings and goes offline once"
                    .into(),
            );
        }
        if o.dialect == Dialect::Nchan && (offline || o.claims) {
            return Err("--leave, --expire-secs and --claims are heartbeat's alone".into());
        }
        if o.dialect == Dialect::Nchan && o.users_per_stream > 255 {
            return Err("nchan's /multi/ takes at most 255 channels".into());
        }
        let loopback = o.addr.is_ipv4() && o.addr.ip().is_loopback();
        if o.sources == 0 || (o.sources > 1 && !loopback) {
            return Err(
                "--sources: above 0, and more than 1 only for an IPv4 loopback --addr".into(),
            );
        }
        if o.leave && o.expire_secs > 0 {
            return Err("--leave and --expire-secs: one or the other".into());
        }
        Ok(o)
    }
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
