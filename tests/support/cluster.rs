//! A Redis Cluster of the test's own: three masters with a replica each, on free loopback
//! ports below 55536 (each node also listens on its port + 10000 for the cluster bus).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::Redis;
use super::tls::Pki;
use super::wait_until;

/// Six `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    /// Whether the nodes speak TLS only, to clients and to each other.
    tls: bool,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// A cluster that speaks TLS only, with `pki`'s server certificate, to clients and on
    /// its bus.
    pub fn start_tls(pki: &Pki) -> Cluster {
        Cluster::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> Cluster {
        let nodes: Vec<Redis> = (0..6).map(|_| start_node(pki)).collect();
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        let mut create = Command::new("redis-cli");
        create.args([
            "--user",
            super::redis::ADMIN,
            "--pass",
            super::redis::ADMIN_PASSWORD,
        ]);
        if let Some(pki) = pki {
            create.args(["--tls", "--cacert", &pki.file("ca.crt")]);
            create.args([
                "--cert",
                &pki.file("client.crt"),
                "--key",
                &pki.file("client.key"),
            ]);
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster {
            nodes,
            tls: pki.is_some(),
        };
        cluster.wait_until_ok(Duration::from_secs(20));
        // And every replica has synced with its master, so a failover loses nothing.
        let synced = wait_until(Duration::from_secs(20), || {
            cluster.nodes.iter().all(|node| {
                node.connection()
                    .and_then(|mut con| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut con)
                    })
                    .is_ok_and(|info| {
                        info.contains("master_link_status:up")
                            || info.contains("connected_slaves:1")
                    })
            })
        });
        assert!(synced.is_ok(), "the replicas did not sync within 20 s");
        cluster
    }

    /// The `REDIS` value that points heartbeat at the cluster (one seed node).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "clusters" } else { "cluster" };
        format!("{scheme}://{}", self.nodes[0].addr())
    }

    /// Waits until every live node says the cluster is ok and agrees on who serves slot 0.
    pub fn wait_until_ok(&self, within: Duration) {
        let ok = wait_until(within, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                node.connection()
                    .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
        assert!(
            ok.is_ok(),
            "the cluster did not become ok within {within:?}"
        );
    }

    /// The node that is master of `key`'s slot now, as the first live node sees it.
    pub fn master_of(&self, key: &str) -> usize {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no master of ours serves {key:?}"))
    }

    fn try_master_of(&self, key: &str) -> Option<usize> {
        let asker = self.nodes.iter().find(|n| n.is_running())?;
        let mut con = asker.connection().ok()?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .ok()?;
        let ranges: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
        let redis::Value::Array(ranges) = ranges else {
            return None;
        };
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (redis::Value::Int(first), redis::Value::Int(last), redis::Value::Array(master)) =
                (&fields[0], &fields[1], &fields[2])
            else {
                continue;
            };
            if (*first..=*last).contains(&slot) {
                let redis::Value::Int(port) = master[1] else {
                    continue;
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| n.is_running() && i64::from(n.port) == port);
            }
        }
        None
    }

    /// Ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .filter(|n| {
                let info: String = n.query(redis::cmd("INFO").arg("replication"));
                info.contains("role:master")
            })
            .map(|n| n.port)
            .collect()
    }

    /// Moves `key`'s slot to another master the way `redis-cli --cluster reshard` does
    /// (`IMPORTING`, `MIGRATING`, `MIGRATE` of its keys, then `NODE` on every master), and
    /// calls `meanwhile` when the keys have moved but the slot is still the old master's (it
    /// answers `ASK`). Returns the new master.
    pub fn move_slot_of(&self, key: &str, meanwhile: impl FnOnce()) -> usize {
        let from = self.master_of(key);
        let masters = self.master_ports();
        let to = self
            .nodes
            .iter()
            .position(|n| n.port != self.nodes[from].port && masters.contains(&n.port))
            .expect("another master");
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let id = |node: &Redis| -> String { node.query(redis::cmd("CLUSTER").arg("MYID")) };
        let slot: i64 = source.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        let setslot = |node: &Redis, state: &str, id: &str| {
            let _: () = node.query(
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id),
            );
        };
        setslot(target, "IMPORTING", &id(source));
        setslot(source, "MIGRATING", &id(target));
        let keys: Vec<String> = source.query(
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1000),
        );
        if !keys.is_empty() {
            let _: () = source.query(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target.port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("AUTH2")
                    .arg(super::redis::ADMIN)
                    .arg(super::redis::ADMIN_PASSWORD)
                    .arg("KEYS")
                    .arg(&keys),
            );
        }
        meanwhile();
        let target_id = id(target);
        setslot(target, "NODE", &target_id);
        setslot(source, "NODE", &target_id);
        for node in self.nodes.iter().filter(|n| masters.contains(&n.port)) {
            setslot(node, "NODE", &target_id);
        }
        to
    }

    /// The node that replicates the master `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let info: String = self.nodes[master].query(redis::cmd("INFO").arg("replication"));
        let port: u16 = info
            .lines()
            .find_map(|l| l.strip_prefix("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no replica in {info}"));
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a replica of ours")
    }

    /// Kills the master of `key`'s slot; returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let master = self.master_of(key);
        self.nodes[master].kill();
        self.nodes[master].port
    }

    /// Waits until a replica has taken over `key`'s slot from the master on port `killed`
    /// and the cluster is ok again; returns how long that took from the call.
    pub fn wait_for_failover(&self, key: &str, killed: u16) -> Duration {
        let began = Instant::now();
        let promoted = wait_until(Duration::from_secs(30), || {
            self.try_master_of(key)
                .is_some_and(|m| self.nodes[m].port != killed)
        });
        assert!(
            promoted.is_ok(),
            "no replica took over from {killed} in 30 s"
        );
        self.wait_until_ok(Duration::from_secs(20));
        began.elapsed()
    }
}

/// A cluster-enabled node on a free port whose bus port (+10000) is free too; TLS-only with
/// `pki`'s certificates if there is one.
fn start_node(pki: Option<&Pki>) -> Redis {
    for _ in 0..50 {
        let port = 20_000 + (rand() % 25_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !free(port) || !free(port + 10_000) {
            continue;
        }
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--cluster-config-file",
            "nodes.conf",
        ]
        .map(String::from)
        .to_vec();
        if let Some(pki) = pki {
            args.extend(pki.server_args(port, "server", false));
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let tls = pki.map(Pki::client_certificates);
        if let Some(redis) = Redis::try_start_tls(port, &args, tls) {
            return redis;
        }
    }
    panic!("could not start a cluster node after 50 tries");
}

/// A number that differs between calls and processes.
fn rand() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
