//! Test support: a private `redis-server` ([`redis`]), the real `heartbeat` binary
//! ([`heartbeat`]), clients that speak HTTP over raw sockets and read SSE the way a browser
//! does ([`client`]), and a proxy that can freeze or cut a link ([`proxy`]).
#![allow(dead_code, unused_imports)] // each test file uses its own part of this module

pub mod client;
pub mod cluster;
pub mod heartbeat;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod tls;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use self::client::{Reply, Sse, SseItem, largest_send_queue, read_reply, stalled_subscriber};
pub use self::cluster::Cluster;
pub use self::heartbeat::{Heartbeat, binary, children_of, is_static, key_prefix, sample_in};
pub use self::proxy::{Link, Proxy};
pub use self::redis::{Redis, free_port};
pub use self::tls::Pki;

/// Now, in UTC epoch seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether a test can run here: `true` if `available`. If not, it is skipped with `why`
/// outside CI, and fails in CI, which must run every test.
pub fn runs_here(available: bool, why: &str) -> bool {
    if !available {
        assert!(std::env::var_os("CI").is_none(), "not skipped in CI: {why}");
        eprintln!("skipped: {why}");
    }
    available
}

/// The opening most tests share: a Redis of their own and one heartbeat on it.
pub fn heartbeat_on_redis() -> (Redis, Heartbeat) {
    let redis = Redis::start();
    let heartbeat = Heartbeat::start(&redis.addr());
    (redis, heartbeat)
}

/// Short names for the waits tests use.
pub const SOON: Duration = Duration::from_secs(2);
pub const AT_ONCE: Duration = Duration::from_millis(500);

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

pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{name} {pid}");
}
