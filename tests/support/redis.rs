//! A `redis-server` of the test's own on a free loopback port, persisting nothing; it can be
//! killed, restarted on its port, or frozen.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, signal};

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
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = match &self.tls {
            None => redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?,
            Some(tls) => redis::Client::build_with_tls(
                format!("rediss://localhost:{}", self.port),
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
