//! The real `heartbeat` binary (`HEARTBEAT_BIN`, or the one cargo built), started in a
//! scratch directory on an ephemeral loopback port, with its log, threads and descriptors
//! at hand.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{Reply, Sse, read_reply};
use super::{TempDir, wait_until};

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
        Heartbeat::launch(dir, env, &Launch::Direct)
    }

    /// Like `launch_in`, with the descriptor limit (`RLIMIT_NOFILE`) set to `nofile`.
    pub fn launch_in_with_nofile(dir: TempDir, env: &[(&str, &str)], nofile: u32) -> Heartbeat {
        Heartbeat::launch(dir, env, &Launch::Nofile(nofile))
    }

    /// Like `launch_in`, the way a `FROM scratch` image runs it: alone in an empty root (the
    /// binary, the repository's `.env` and an `etc/hosts` of `hosts`), as uid 10001, in a
    /// PID namespace of its own with `/proc` mounted. Needs root, and a static binary.
    pub fn launch_in_empty_root(dir: TempDir, env: &[(&str, &str)], hosts: &str) -> Heartbeat {
        Heartbeat::launch(dir, env, &Launch::EmptyRoot(hosts.to_owned()))
    }

    fn launch(dir: TempDir, env: &[(&str, &str)], how: &Launch) -> Heartbeat {
        let (child, log) = spawn_heartbeat(&dir.0, env, how);
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

    /// `POST /ping` as `user` from `device`, with `{"status": status}`.
    pub fn ping_from(&self, user: &str, device: &str, status: &str) -> Reply {
        let claim = format!(r#"{{"userid":"{user}","clientid":"{device}"}}"#);
        let body = serde_json::json!({ "status": status }).to_string();
        self.post_ping(Some(&claim), &body)
    }

    /// `POST /leave` as `user`'s `device`.
    pub fn leave(&self, user: &str, device: &str) -> Reply {
        let claim = format!(r#"{{"userid":"{user}","clientid":"{device}"}}"#);
        self.request(
            format!(
                "POST /leave HTTP/1.1\r\nHost: t\r\nX-User-Claim: {claim}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
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

    /// Opens `GET path` as an event stream resuming after event `id` (`Last-Event-ID`).
    pub fn resume(&self, path: &str, id: u64) -> Sse {
        let header = format!("Last-Event-ID: {id}\r\n");
        Sse::open_with(self.connect(), path, "HTTP/1.1", &header)
    }

    /// The value of the sample `name` (with its labels) in `/metrics`, if present.
    pub fn sample(&self, name: &str) -> Option<f64> {
        sample_in(&self.get("/metrics").body, name)
    }

    /// `GET path` on a connection of its own; the response in full.
    pub fn get(&self, path: &str) -> Reply {
        self.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

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

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // In an empty root, heartbeat is the child of `unshare`, and `chroot --userspec`
        // cleared the parent-death signal that `--kill-child` set: end it by its own pid.
        for pid in children_of(self.pid()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let parent = format!("PPid:\t{pid}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            status.lines().any(|l| l == parent).then_some(child)
        })
        .collect()
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

/// How the binary is started.
enum Launch {
    Direct,
    /// Under `prlimit --nofile=N`.
    Nofile(u32),
    /// In an empty root with this `etc/hosts`.
    EmptyRoot(String),
}

/// Starts the binary in `dir` (so no `.env` of the repository applies), logging to a file.
fn spawn_heartbeat(dir: &Path, env: &[(&str, &str)], how: &Launch) -> (Child, PathBuf) {
    let log = dir.join("heartbeat.log");
    let log_file = std::fs::File::create(&log).expect("create the log file");
    let binary = binary();
    let mut command = match how {
        Launch::Direct => Command::new(&binary),
        Launch::Nofile(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&binary);
            c
        }
        Launch::EmptyRoot(hosts) => {
            let root = empty_root(dir, &binary, hosts);
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"])
                .arg(format!("--mount-proc={}", root.join("proc").display()))
                .arg(on_path("chroot"))
                .arg("--userspec=10001:10001")
                .arg(&root)
                .arg("/heartbeat");
            c
        }
    };
    command
        .current_dir(dir)
        .env_clear()
        .env("LISTEN", "127.0.0.1:0")
        .env("KEY_PREFIX", key_prefix())
        // Tests ping far faster than a device does; those of the limit set it.
        .env("MAX_PINGS_PER_MINUTE", "0")
        .stdout(Stdio::null())
        .stderr(log_file);
    for (k, v) in env {
        command.env(k, v);
    }
    (command.spawn().expect("start heartbeat"), log)
}

/// `dir/root`, holding only what the image holds: the binary, `.env`, `etc/hosts`, and an
/// empty `proc` to mount on.
fn empty_root(dir: &Path, binary: &Path, hosts: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::copy(binary, root.join("heartbeat")).expect("copy the binary");
    let dotenv = concat!(env!("CARGO_MANIFEST_DIR"), "/.env");
    std::fs::copy(dotenv, root.join(".env")).expect("copy .env");
    std::fs::write(root.join("etc/hosts"), hosts).unwrap();
    for (path, mode) in [
        ("", 0o755),
        ("etc", 0o755),
        ("heartbeat", 0o755),
        (".env", 0o644),
    ] {
        let permissions = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(root.join(path), permissions).unwrap();
    }
    // The temp dir is the test's own, made with the default mode; the user must reach root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Where `program` is on this process's `PATH` (the child's environment is cleared).
fn on_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// Whether `binary` is statically linked (asks for no program interpreter), as the image
/// needs.
pub fn is_static(binary: &Path) -> bool {
    let out = Command::new("readelf")
        .arg("-l")
        .arg(binary)
        .output()
        .expect("run readelf (binutils)");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("INTERP")
}

/// The value of the sample `name` (with its labels) in a `/metrics` text, if present.
pub fn sample_in(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The `KEY_PREFIX` tests run heartbeat with, unless they set their own.
pub fn key_prefix() -> String {
    format!("hbtest{}:", std::process::id())
}

fn proc_entries(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}
