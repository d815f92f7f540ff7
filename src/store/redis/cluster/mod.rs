//! The store on a Redis Cluster: last pings and shard channels spread over the masters by the
//! user's hash slot, pings stored by the same writers and script as on one Redis (the script
//! runs on the user's master and publishes with `SPUBLISH`), reads grouped by master, and a
//! feed per master subscribed to just the users watched here ([`shard`]), arranged by the
//! `redis-cluster` thread ([`coordinator`]) from the slot map ([`topology`]).

mod coordinator;
mod shard;
mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use self::coordinator::{ClusterFeed, Context, FeedStates};
use self::topology::Topology;
use super::RedisOptions;
use super::node::{Node, Redirect, Router};
use super::schema::{Keys, LastRow, Record, parse_last};
use super::script::RecordScript;
use super::writer::Writers;
use crate::config::ClusterSeeds;
use crate::hub::Hub;
use crate::metrics::{Metrics, RedisCall};
use crate::presence::Presence;
use crate::store::cached::CachedReads;
use crate::store::{Kind, ShardProblem, Store, StoreError, Unhealthy};
use crate::worker::Worker;

/// Users' presences, as read.
type Pings = Vec<(String, Presence)>;
/// Users by the master that serves them.
type Groups = Vec<(Arc<Node>, Vec<String>)>;

/// Last pings on a Redis Cluster, shared by every instance on the same cluster and prefix.
pub struct ClusterStore {
    keys: Keys,
    topology: Arc<Topology>,
    wake: crossbeam_channel::Receiver<()>,
    writers: Writers,
    timeout: Duration,
    /// The device TTL, for presences stored before there were devices.
    ttl_micros: u64,
    feeds: FeedStates,
    metrics: Arc<Metrics>,
}

impl ClusterStore {
    /// A store on the cluster reached through `seeds`, with its `redis-writer` threads. The
    /// slot map is asked for by the feed's thread once it starts, so this succeeds while the
    /// cluster is down.
    pub fn start(
        seeds: &ClusterSeeds,
        options: &RedisOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(ClusterStore, Worker), RedisError> {
        let (topology, wake) = Topology::new(seeds.clone(), options.pool_size, options.timeout);
        let router: Arc<dyn Router> = topology.clone();
        let script = RecordScript::new(&options.presence);
        let (writers, worker) =
            Writers::start(router, &[], options.wait_replicas, script, &metrics)?;
        let store = ClusterStore {
            keys: Keys::cluster(&options.key_prefix),
            topology,
            wake,
            writers,
            timeout: options.timeout,
            ttl_micros: options.presence.ttl_micros(),
            feeds: FeedStates::default(),
            metrics,
        };
        Ok((store, worker))
    }

    /// Starts the `redis-cluster` thread, which keeps the slot map and a `redis-ssubscribe`
    /// thread per master, handing this instance's watched users' pings to `hub`.
    pub fn start_feed(&self, hub: Arc<Hub>, cached: CachedReads) -> std::io::Result<Worker> {
        ClusterFeed {
            context: Arc::new(Context {
                topology: Arc::clone(&self.topology),
                keys: self.keys.clone(),
                timeout: self.timeout,
                metrics: Arc::clone(&self.metrics),
                hub,
                cached,
            }),
            states: Arc::clone(&self.feeds),
            wake: self.wake.clone(),
        }
        .spawn()
    }

    /// Reads the last pings of `users`, all on `node`, in one round trip. Users whose slot
    /// has moved (`MOVED`) come back in the second list, to be read where the map says now.
    fn read_node(&self, node: &Node, users: &[String]) -> Result<(Pings, Vec<String>), StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for user in users {
            self.keys.add_last_read(&mut pipe, user);
        }
        let replies = node.pool.with(|con| pipe.query::<Vec<Value>>(con));
        let replies = replies.inspect_err(|_| {
            Metrics::count(&self.metrics.redis_errors_total);
            self.topology.failed(node);
        })?;
        let (mut pings, mut moved) = (Vec::new(), Vec::new());
        for (user, reply) in users.iter().zip(replies) {
            match reply {
                Value::ServerError(ref e)
                    if let Some(Redirect::Moved(slot, addr)) = Redirect::of(e) =>
                {
                    self.topology.moved(slot, addr);
                    moved.push(user.clone());
                }
                Value::ServerError(e) => {
                    log::debug!("{} refused a read: {e}", node.addr);
                    return Err(e.into());
                }
                reply => {
                    let row: LastRow = redis::FromRedisValue::from_redis_value(reply)?;
                    if let Some(presence) = parse_last(row, self.ttl_micros) {
                        pings.push((user.clone(), presence));
                    }
                }
            }
        }
        Ok((pings, moved))
    }

    /// Each master's users among `users`.
    fn by_master(&self, users: &[String]) -> Result<Groups, StoreError> {
        let mut groups: Groups = Vec::new();
        for user in users {
            let node = self.topology.node_for(&self.keys.last(user))?;
            match groups.iter_mut().find(|(n, _)| n.addr == node.addr) {
                Some((_, group)) => group.push(user.clone()),
                None => groups.push((node, vec![user.clone()])),
            }
        }
        Ok(groups)
    }
}

impl Store for ClusterStore {
    fn record(
        &self,
        user: &str,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
    ) -> Result<Option<u64>, StoreError> {
        let record = Record::new(
            &self.keys,
            user,
            device,
            status,
            now_micros,
            self.ttl_micros,
        );
        self.writers.record(record, self.timeout)
    }

    /// One round trip per master that serves some of `users`; a slot that moved meanwhile
    /// costs one more.
    fn last_many(&self, users: &[String]) -> Result<Vec<(String, Presence)>, StoreError> {
        let began = Instant::now();
        let mut pings = Vec::with_capacity(users.len());
        let mut left = users.to_vec();
        for _ in 0..2 {
            let mut moved = Vec::new();
            for (node, group) in self.by_master(&left)? {
                let (found, elsewhere) = self.read_node(&node, &group)?;
                pings.extend(found);
                moved.extend(elsewhere);
            }
            left = moved;
            if left.is_empty() {
                break;
            }
        }
        self.metrics
            .redis_call(RedisCall::CachedRead)
            .observe(began.elapsed());
        match left.is_empty() {
            true => Ok(pings),
            false => Err(StoreError::Moved(format!(
                "the slots of {} users kept moving",
                left.len()
            ))),
        }
    }

    fn kind(&self) -> Kind {
        Kind::Cluster
    }

    /// Healthy when every slot has a master, and every master answers `PING` and has its
    /// feed up. Otherwise the reason names each shard that is not.
    fn health(&self) -> Result<(), Unhealthy> {
        let (masters, uncovered) = self
            .topology
            .read(|map| (map.masters().to_vec(), map.uncovered()));
        let mut problems = Vec::new();
        if uncovered > 0 {
            problems.push(ShardProblem::Uncovered(uncovered));
        }
        let began = Instant::now();
        for node in &masters {
            let pong = node
                .pool
                .with(|con| redis::cmd("PING").query::<String>(con));
            let feed_up = self.feeds.read().get(&node.addr).is_some_and(|f| f.is_up());
            match (pong, feed_up) {
                (Err(e), _) => problems.push(ShardProblem::Failing(node.addr.clone(), e)),
                (Ok(_), false) => problems.push(ShardProblem::FeedDown(node.addr.clone())),
                (Ok(_), true) => {}
            }
        }
        self.metrics
            .redis_call(RedisCall::Health)
            .observe(began.elapsed());
        match problems.is_empty() {
            true => Ok(()),
            false => Err(Unhealthy::Shards(problems)),
        }
    }

    fn feed_up(&self) -> Option<bool> {
        let masters = self.topology.read(|map| {
            map.masters()
                .iter()
                .map(|n| n.addr.clone())
                .collect::<Vec<_>>()
        });
        let feeds = self.feeds.read();
        let up = !masters.is_empty()
            && masters
                .iter()
                .all(|addr| feeds.get(addr).is_some_and(|f| f.is_up()));
        Some(up)
    }
}
