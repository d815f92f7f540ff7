//! Test support: a private `redis-server` on a free loopback port, the real `heartbeat`
//! binary, and clients that speak HTTP over raw sockets and read SSE the way a browser does.
#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A test's own scratch directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "heartbeat-test-{}-{what}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of the test's own, on a free loopback port, persisting nothing.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        for _ in 0..20 {
            let port = free_port();
            if let Some(redis) = Redis::try_start(port) {
                return redis;
            }
        }
        panic!("could not start redis-server on a free port after 20 tries");
    }

    /// Starts on `port`, retrying for a while if the port is still held.
    pub fn start_on(port: u16) -> Redis {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(redis) = Redis::try_start(port) {
                return redis;
            }
            assert!(Instant::now() < deadline, "redis did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same port, as after a crash (the data is gone).
    pub fn restart(&mut self) {
        self.kill();
        *self = Redis::start_on(self.port);
    }

    fn try_start(port: u16) -> Option<Redis> {
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); the tests need a real Redis: \
                     install it with `apt-get install -y redis-server`"
                )
            });
        let mut redis = Redis {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = redis.child.as_mut().unwrap().try_wait().unwrap() {
                let _ = status; // most likely the port was taken
                redis.child = None;
                return None;
            }
            if redis.connection().is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The `REDIS` value that points heartbeat here.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Runs a command and returns its reply.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection().expect("connect to the test redis"))
            .expect("query the test redis")
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The real `heartbeat` binary, listening on an ephemeral loopback port.
pub struct Heartbeat {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    dir: TempDir,
}

impl Heartbeat {
    /// Starts with `REDIS=redis` and waits until it serves (and, on Redis, has subscribed).
    pub fn start(redis: &str) -> Heartbeat {
        Heartbeat::start_with(&[("REDIS", redis)])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Heartbeat {
        let heartbeat = Heartbeat::launch_in(TempDir::new("heartbeat"), env);
        let memory = env.iter().any(|(k, v)| *k == "REDIS" && *v == "memory");
        if !memory {
            heartbeat.wait_for_log("redis subscription up");
        }
        heartbeat
    }

    /// Starts in `dir` and waits only until it listens (Redis may be down).
    pub fn launch_in(dir: TempDir, env: &[(&str, &str)]) -> Heartbeat {
        Heartbeat::launch(dir, env, None)
    }

    /// Like `launch_in`, with the descriptor limit (`RLIMIT_NOFILE`) set to `nofile`.
    pub fn launch_in_with_nofile(dir: TempDir, env: &[(&str, &str)], nofile: u32) -> Heartbeat {
        Heartbeat::launch(dir, env, Some(nofile))
    }

    fn launch(dir: TempDir, env: &[(&str, &str)], nofile: Option<u32>) -> Heartbeat {
        let (child, log) = spawn_heartbeat(&dir.0, env, nofile);
        let mut heartbeat = Heartbeat {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            dir,
        };
        let line = heartbeat.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("an address in the listening line");
        heartbeat.addr = addr.parse().expect("a socket address");
        heartbeat
    }

    /// Waits up to 10 s for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if self.exited() {
                panic!(
                    "heartbeat exited before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "heartbeat did not log {needle:?} within 10 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has exited (it stays a zombie until dropped).
    pub fn exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        // The state letter follows the parenthesised command name.
        let state = stat
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.chars().next());
        !matches!(state, Some(s) if s != 'Z' && s != 'X')
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `within` for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str, within: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "heartbeat still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `POST /ping` as `user` with `{"status": status}`.
    pub fn ping(&self, user: &str, status: &str) -> Reply {
        let claim = format!(r#"{{"userid":"{user}","clientid":"test"}}"#);
        let body = serde_json::json!({ "status": status }).to_string();
        self.post_ping(Some(&claim), &body)
    }

    /// `POST /ping` with any claim and body.
    pub fn post_ping(&self, claim: Option<&str>, body: &str) -> Reply {
        let claim = claim.map_or(String::new(), |c| format!("X-User-Claim: {c}\r\n"));
        self.request(
            format!(
                "POST /ping HTTP/1.1\r\nHost: t\r\n{claim}Content-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    /// Sends raw bytes and reads one response; the request should ask to close.
    pub fn request(&self, raw: &[u8]) -> Reply {
        let mut stream = self.connect();
        stream.write_all(raw).expect("send the request");
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader).expect("a response")
    }

    /// A connection with Nagle off, as latency-minded clients and proxies use.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to heartbeat");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Opens `GET path` as an event stream and reads its head.
    pub fn subscribe(&self, path: &str) -> Sse {
        Sse::open(self.connect(), path, "HTTP/1.1")
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test: `HEARTBEAT_BIN` if set (CI sets it to the static release build,
/// the one that ships), else the one cargo built for these tests.
pub fn binary() -> PathBuf {
    match std::env::var_os("HEARTBEAT_BIN") {
        Some(path) => {
            std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("HEARTBEAT_BIN={path:?}: {e}"))
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_heartbeat")),
    }
}

/// Starts the binary in `dir` (so no `.env` of the repository applies), logging to a file,
/// with the descriptor limit set to `nofile` if given.
fn spawn_heartbeat(dir: &Path, env: &[(&str, &str)], nofile: Option<u32>) -> (Child, PathBuf) {
    let log = dir.join("heartbeat.log");
    let log_file = std::fs::File::create(&log).expect("create the log file");
    let binary = binary();
    let mut command = match nofile {
        None => Command::new(&binary),
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&binary);
            c
        }
    };
    command
        .current_dir(dir)
        .env_clear()
        .env("LISTEN", "127.0.0.1:0")
        .env("KEY_PREFIX", key_prefix())
        .stdout(Stdio::null())
        .stderr(log_file);
    for (k, v) in env {
        command.env(k, v);
    }
    (command.spawn().expect("start heartbeat"), log)
}

/// The `KEY_PREFIX` tests run heartbeat with, unless they set their own.
pub fn key_prefix() -> String {
    format!("hbtest{}:", std::process::id())
}

/// An HTTP response as read off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and that the body is one non-empty line of text.
    pub fn assert_refused(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        let reason = self.body.strip_suffix('\n').unwrap_or_else(|| {
            panic!("an error body ends with a newline: {self:?}");
        });
        assert!(!reason.is_empty() && !reason.contains('\n'), "{self:?}");
        reason
    }
}

/// Reads a status line, headers and a `Content-Length` body.
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("a header line");
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    if let Some(len) = reply.header("content-length") {
        let mut body = vec![0; len.parse().expect("a length")];
        reader.read_exact(&mut body)?;
        reply.body = String::from_utf8(body).expect("a UTF-8 body");
    }
    Ok(reply)
}

/// One thing read off an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event's data.
    Data(String),
    /// A `:` comment line (a keepalive).
    Comment,
    /// The server ended the stream with the last chunk.
    End,
}

/// An event stream read the way a browser reads it: chunked framing decoded, then SSE lines.
pub struct Sse {
    reader: BufReader<TcpStream>,
    pub head: Reply,
    /// Decoded SSE text not yet split into events.
    text: String,
    ended: bool,
}

impl Sse {
    /// Sends `GET path` and reads the response head.
    pub fn open(stream: TcpStream, path: &str, version: &str) -> Sse {
        // One write: split writes would wait on Nagle and the server's delayed ACK.
        let request =
            format!("GET {path} {version}\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n");
        (&stream).write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let head = read_reply(&mut reader).expect("a response head");
        Sse {
            reader,
            head,
            text: String::new(),
            ended: false,
        }
    }

    /// The next item within `timeout`, or `None`.
    pub fn next(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.take_item() {
                return Some(item);
            }
            if self.ended {
                return Some(SseItem::End);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.read_chunk() {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("the stream broke: {e}"),
            }
        }
    }

    /// The next event's data, skipping keepalives; panics if none comes within `timeout`.
    pub fn expect_data(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(SseItem::Data(data)) => return data,
                Some(SseItem::Comment) => continue,
                Some(SseItem::End) => panic!("the stream ended while waiting for an event"),
                None => panic!("no event within {timeout:?}"),
            }
        }
    }

    /// The next event's data parsed as `{"time": …, "status": …}`.
    pub fn expect_ping(&mut self, timeout: Duration) -> (u64, String) {
        let data = self.expect_data(timeout);
        let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 2, "only time and status: {data}");
        let time = object["time"]
            .as_u64()
            .unwrap_or_else(|| panic!("integer time: {data}"));
        let status = object["status"].as_str().expect("string status").to_owned();
        (time, status)
    }

    /// Asserts that no event arrives for `quiet` (keepalives are fine).
    pub fn expect_no_data(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                None | Some(SseItem::Comment) => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Asserts that the server ends the stream with the last chunk within `timeout`.
    pub fn expect_end(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(SseItem::End) => return,
                Some(SseItem::Comment) => continue,
                Some(other) => panic!("expected the end, got {other:?}"),
                None => panic!("the stream did not end within {timeout:?}"),
            }
        }
    }

    fn take_item(&mut self) -> Option<SseItem> {
        let end = self.text.find("\n\n")?;
        let block: String = self.text.drain(..end + 2).collect();
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                data = Some(match data {
                    Some(before) => format!("{before}\n{value}"),
                    None => value.to_owned(),
                });
            }
        }
        Some(data.map_or(SseItem::Comment, SseItem::Data))
    }

    fn read_chunk(&mut self) -> std::io::Result<()> {
        if self.head.header("transfer-encoding") != Some("chunked") {
            let mut buf = [0; 4096];
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                self.ended = true;
            }
            self.text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            return Ok(());
        }
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line)? == 0 {
            panic!("the connection closed without the last chunk");
        }
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("a chunk size line: {size_line:?}"));
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk)?;
        assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
        if size == 0 {
            self.ended = true;
        }
        self.text
            .push_str(std::str::from_utf8(&chunk[..size]).expect("UTF-8 events"));
        Ok(())
    }
}

/// Short names for the waits tests use.
pub const SOON: Duration = Duration::from_secs(2);
pub const AT_ONCE: Duration = Duration::from_millis(500);

impl Heartbeat {
    /// Threads of the process now.
    pub fn threads(&self) -> usize {
        proc_entries(self.pid(), "task")
    }

    /// Open file descriptors of the process now.
    pub fn fds(&self) -> usize {
        proc_entries(self.pid(), "fd")
    }

    /// Waits up to `within` for the thread count to fall to `baseline`; returns how long it took.
    pub fn wait_for_threads(&self, baseline: usize, within: Duration) -> Duration {
        let started = Instant::now();
        wait_until(within, || self.threads() <= baseline).unwrap_or_else(|_| {
            panic!(
                "threads stayed at {} (baseline {baseline}) for {within:?}:\n{}",
                self.threads(),
                self.logs()
            )
        });
        started.elapsed()
    }

    /// Counts log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits up to 15 s until `needle` has been logged `n` times.
    pub fn wait_for_log_count(&self, needle: &str, n: usize) {
        wait_until(Duration::from_secs(15), || self.log_count(needle) >= n)
            .unwrap_or_else(|_| panic!("{needle:?} was not logged {n} times:\n{}", self.logs()));
    }
}

fn proc_entries(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Polls `condition` every 10 ms for up to `within`.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Redis {
    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{name} {pid}");
}

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

/// A client that sends `GET path` and never reads: a subscriber that stopped reading. Its
/// receive buffer is kept small, so the server's writes to it soon block.
pub fn stalled_subscriber(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    stream
}
