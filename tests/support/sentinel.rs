//! Redis Sentinel of the test's own: a master and a replica (whose default users hold the rule
//! of `REDIS=sentinel://...`), and three `redis-server --sentinel`s watching them as `mymaster`
//! with a failover after one second down; with a password on the sentinels if asked.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::{ADMIN, ADMIN_PASSWORD, Redis, free_port};
use super::tls::Pki;
use super::{TempDir, wait_until};

/// The name the sentinels know the master by.
pub const MASTER: &str = "mymaster";

/// One `redis-server --sentinel`.
pub struct SentinelProcess {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, its replica, and three sentinels.
pub struct Sentinels {
    /// The first master, then its replica.
    pub servers: Vec<Redis>,
    pub sentinels: Vec<SentinelProcess>,
    /// The sentinels' password, if they have one.
    pub password: Option<String>,
    /// How the test reaches TLS-only sentinels.
    tls: Option<redis::TlsCertificates>,
}

impl Sentinels {
    /// Everything TLS-only, with `pki`'s certificates, if there is one.
    pub fn start(password: Option<&str>, pki: Option<&Pki>) -> Sentinels {
        let mode = "sentinel://:1/m";
        let master = start_server(&[], mode, pki);
        let replicaof = format!("127.0.0.1 {}", master.port);
        let replica = start_server(&["--replicaof", &replicaof], mode, pki);
        let synced = wait_until(Duration::from_secs(10), || {
            let info: String = replica.query(redis::cmd("INFO").arg("replication"));
            info.contains("master_link_status:up")
        });
        assert!(synced.is_ok(), "the replica did not sync");
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| start_sentinel(master.port, password, pki))
            .collect();
        let set = Sentinels {
            servers: vec![master, replica],
            sentinels,
            password: password.map(str::to_owned),
            tls: pki.map(Pki::client_certificates),
        };
        // Each sentinel knows the replica and the two other sentinels: a failover can run.
        let ready = wait_until(Duration::from_secs(20), || {
            set.sentinels.iter().all(|s| {
                set.ask(s.port, "num-other-sentinels") == Some(2)
                    && set.ask(s.port, "num-slaves") == Some(1)
            })
        });
        assert!(ready.is_ok(), "the sentinels did not meet in 20 s");
        set
    }

    /// `sentinels://`-less `host:port,...` of the sentinels, for a `sentinel://` URL.
    pub fn hosts(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        hosts.join(",")
    }

    /// A number field of `SENTINEL MASTER mymaster` on the sentinel at `port`.
    fn ask(&self, port: u16, field: &str) -> Option<i64> {
        let auth = self
            .password
            .as_deref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let client = match &self.tls {
            Some(tls) => {
                let url = format!("rediss://{auth}localhost:{port}");
                redis::Client::build_with_tls(url, tls.clone()).ok()?
            }
            None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}")).ok()?,
        };
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER)
            .query(&mut con)
            .ok()?;
        let at = fields.iter().position(|f| f == field)?;
        fields.get(at + 1)?.parse().ok()
    }

    /// Waits until the replica has everything the master has (same replication offset).
    pub fn wait_for_sync(&self) {
        let offset = |redis: &Redis, field: &str| -> Option<i64> {
            let info: String = redis.query(redis::cmd("INFO").arg("replication"));
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        let synced = wait_until(Duration::from_secs(10), || {
            let master = offset(&self.servers[0], "master_repl_offset:");
            master.is_some() && master == offset(&self.servers[1], "slave_repl_offset:")
        });
        assert!(synced.is_ok(), "the replica did not catch up");
    }
}

fn start_server(args: &[&str], mode: &str, pki: Option<&Pki>) -> Redis {
    for _ in 0..20 {
        let port = free_port();
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(pki) = pki {
            all.extend(pki.server_args(port, "server", false));
            all.extend(["--tls-replication".into(), "yes".into()]);
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let tls = pki.map(Pki::client_certificates);
        if let Some(redis) = Redis::try_start_as(port, &all, tls, mode) {
            return redis;
        }
    }
    panic!("could not start a redis-server for sentinel after 20 tries");
}

fn start_sentinel(master_port: u16, password: Option<&str>, pki: Option<&Pki>) -> SentinelProcess {
    for _ in 0..20 {
        let port = free_port();
        let dir = TempDir::new("sentinel");
        let listen = match pki {
            Some(pki) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                pki.file("server.crt"),
                pki.file("server.key"),
                pki.file("ca.crt")
            ),
            None => format!("port {port}\n"),
        };
        let mut conf = format!(
            "{listen}bind 127.0.0.1\ndir {dir}\nsentinel resolve-hostnames no\n\
             sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 10000\n\
             sentinel parallel-syncs {MASTER} 1\n\
             sentinel auth-user {MASTER} {ADMIN}\nsentinel auth-pass {MASTER} {ADMIN_PASSWORD}\n",
            dir = dir.0.display()
        );
        if let Some(password) = password {
            conf.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        let file = dir.0.join("sentinel.conf");
        std::fs::write(&file, conf).unwrap();
        let mut child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server --sentinel");
        let up = wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        if up.is_ok() && child.try_wait().ok().flatten().is_none() {
            return SentinelProcess {
                child,
                port,
                _dir: dir,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start a sentinel after 20 tries");
}
