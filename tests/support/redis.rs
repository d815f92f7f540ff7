//! A `redis-server` of the test's own on a free loopback port, persisting nothing; it can be
//! killed, restarted on its port, or frozen.
//!
//! Its `default` user, whom heartbeat connects as unless a test names another, holds only the
//! rule `heartbeat acl-rule` prints for the mode and the tests' `KEY_PREFIX`: every suite runs
//! under the least privilege README documents. The tests' own connections are `admin`'s.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::heartbeat::{binary, key_prefix};
use super::{TempDir, signal};

/// The user the tests' own connections (and `redis-cli`) use, with every right.
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-pw";

/// The rule `heartbeat acl-rule` prints for `REDIS=mode` and the tests' `KEY_PREFIX`: the
/// parts `ACL SETUSER` takes after the user's name and password.
pub fn acl_rule(mode: &str) -> Vec<String> {
    let out = Command::new(binary())
        .arg("acl-rule")
        .env_clear()
        .env("REDIS", mode)
        .env("KEY_PREFIX", key_prefix())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run heartbeat acl-rule");
    assert!(out.status.success(), "heartbeat acl-rule: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().last().expect("a rule").to_owned();
    let rule = line
        .strip_prefix("ACL SETUSER heartbeat on >PASSWORD ")
        .unwrap_or_else(|| panic!("not a rule: {line}"));
    rule.split(' ').map(String::from).collect()
}

/// `redis-server` arguments: `admin` with every right, and `default` (no password) with just
/// the rule heartbeat prints for `REDIS=mode`.
fn users(mode: &str) -> Vec<String> {
    static SINGLE: OnceLock<Vec<String>> = OnceLock::new();
    static CLUSTER: OnceLock<Vec<String>> = OnceLock::new();
    static SENTINEL: OnceLock<Vec<String>> = OnceLock::new();
    let cell = match mode {
        m if m.starts_with("cluster") => &CLUSTER,
        m if m.starts_with("sentinel") => &SENTINEL,
        _ => &SINGLE,
    };
    let rule = cell.get_or_init(|| acl_rule(mode));
    let mut args: Vec<String> = ["--user", ADMIN, "on"].map(String::from).to_vec();
    args.extend([
        format!(">{ADMIN_PASSWORD}"),
        "~*".into(),
        "&*".into(),
        "+@all".into(),
    ]);
    args.extend(["--user", "default", "on", "nopass"].map(String::from));
    args.extend(rule.iter().cloned());
    args
}

/// A `redis-server` of the test's own, on a free loopback port, persisting nothing.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// How the test's own connections speak TLS to a TLS-only server.
    tls: Option<redis::TlsCertificates>,
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
        Redis::try_start_with(port, &[])
    }

    /// Starts on `port` with `args` added to the command line, or `None` if it exits (most
    /// likely the port was taken).
    pub fn try_start_with(port: u16, args: &[&str]) -> Option<Redis> {
        Redis::try_start_tls(port, args, None)
    }

    /// As [`Redis::try_start_with`]; `tls` is how the test's connections reach it if `args`
    /// make it TLS-only (`--port 0 --tls-port <port>`).
    pub fn try_start_tls(
        port: u16,
        args: &[&str],
        tls: Option<redis::TlsCertificates>,
    ) -> Option<Redis> {
        let mode = match args.contains(&"--cluster-enabled") {
            true => "cluster://:1",
            false => ":1",
        };
        Redis::try_start_as(port, args, tls, mode)
    }

    /// As [`Redis::try_start_tls`], its default user holding the rule of `REDIS=mode`.
    pub fn try_start_as(
        port: u16,
        args: &[&str],
        tls: Option<redis::TlsCertificates>,
        mode: &str,
    ) -> Option<Redis> {
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica syncs as admin: the default user may not.
            .args(["--masteruser", ADMIN, "--masterauth", ADMIN_PASSWORD])
            .args(users(mode))
            .args(args)
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
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = redis.child.as_mut().unwrap().try_wait().unwrap() {
                let _ = status; // most likely the port was taken
                redis.child = None;
                return None;
            }
            // A TLS server may show a certificate the test's client would refuse: listening
            // is enough.
            let up = match redis.tls {
                Some(_) => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                None => redis.connection().is_ok(),
            };
            if up {
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

    /// A `REDIS` value that connects as `admin`, with every right, for a test that gives
    /// heartbeat a `KEY_PREFIX` of its own.
    pub fn admin_url(&self) -> String {
        format!("redis://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// A connection as `admin`, for the test's own commands.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let (user, pass, port) = (ADMIN, ADMIN_PASSWORD, self.port);
        let client = match &self.tls {
            None => redis::Client::open(format!("redis://{user}:{pass}@127.0.0.1:{port}"))?,
            Some(tls) => redis::Client::build_with_tls(
                format!("rediss://{user}:{pass}@localhost:{port}"),
                tls.clone(),
            )?,
        };
        client.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Runs a command and returns its reply.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection().expect("connect to the test redis"))
            .expect("query the test redis")
    }

    /// Whether this test has not killed it.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
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
