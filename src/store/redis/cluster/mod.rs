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
use super::read::{Allowed, Reader, UserRead, last_many};
use super::schema::{Keys, Record};
use super::script::RecordScript;
use super::writer::Writers;
use crate::config::ClusterSeeds;
use crate::hub::Hub;
use crate::metrics::{Metrics, RedisCall};
use crate::presence::Presence;
use crate::store::cached::CachedReads;
use crate::store::{Kind, ShardProblem, Store, StoreError, Unhealthy};
use crate::worker::Worker;

/// Users, by their index in a request, by the master that serves them.
type Groups = Vec<(Arc<Node>, Vec<usize>)>;

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
        let (topology, wake) = Topology::new(seeds.clone(), options.reach());
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

    /// One `PING` to each seed: at start, to tell a refused certificate (which stops the
    /// start) from a cluster not up yet. The first error, if any.
    pub fn probe(&self) -> Result<(), StoreError> {
        let mut first = Ok(());
        for seed in self.topology.seeds() {
            let Some(node) = self.topology.node(seed) else {
                continue;
            };
            let pong = node
                .pool
                .with(|con| redis::cmd("PING").query::<String>(con));
            match pong {
                Err(e @ StoreError::Tls(_)) => return Err(e),
                Err(e) if first.is_ok() => first = Err(e),
                _ => {}
            }
        }
        first
    }

    /// Starts the `redis-cluster` thread, which keeps the slot map and a `redis-ssubscribe`
    /// thread per master, handing this instance's watched users' pings to `hub`.
    pub fn start_feed(&self, hub: Arc<Hub>, cached: CachedReads) -> std::io::Result<Vec<Worker>> {
        let feed = ClusterFeed {
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
        };
        Ok(vec![feed.spawn()?])
    }

    /// Reads `read` of `users`, all on `node`, in one round trip: each user's result, or
    /// `None` for a user whose slot has moved (`MOVED`), to be read where the map says now.
    fn read_node<R: UserRead>(
        &self,
        node: &Node,
        users: &[&str],
        read: &R,
    ) -> Result<Vec<Option<R::Out>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for user in users {
            read.add(&self.keys, &mut pipe, user);
        }
        let replies = node.pool.with(|con| pipe.query::<Vec<Value>>(con));
        let replies = replies.inspect_err(|_| {
            Metrics::count(&self.metrics.redis_errors_total);
            self.topology.failed(node);
        })?;
        if replies.len() != users.len() * R::COMMANDS {
            let got = format!("{} replies to {} users", replies.len(), users.len());
            return Err(redis::ParsingError::from(got).into());
        }
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let mine: Vec<Value> = replies.by_ref().take(R::COMMANDS).collect();
            let mut moved = false;
            for reply in &mine {
                match reply {
                    Value::ServerError(e)
                        if let Some(Redirect::Moved(slot, addr)) = Redirect::of(e) =>
                    {
                        self.topology.moved(slot, addr);
                        moved = true;
                    }
                    Value::ServerError(e) => {
                        log::debug!("{} refused a read: {e}", node.addr);
                        return Err(e.clone().into());
                    }
                    _ => {}
                }
            }
            out.push(match moved {
                true => None,
                false => Some(read.parse(user, &mut mine.into_iter())?),
            });
        }
        Ok(out)
    }

    /// Each master's users among `users[which]`, by index.
    fn by_master(&self, users: &[String], which: &[usize]) -> Result<Groups, StoreError> {
        let mut groups: Groups = Vec::new();
        for &i in which {
            let node = self.topology.node_for(&self.keys.last(&users[i]))?;
            match groups.iter_mut().find(|(n, _)| n.addr == node.addr) {
                Some((_, group)) => group.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        Ok(groups)
    }
}

impl Reader for ClusterStore {
    /// Reads `read` of every one of `users`, in order: one round trip per master that serves
    /// some of them, and one more for slots that moved meanwhile.
    fn read<R: UserRead>(&self, users: &[String], read: &R) -> Result<Vec<R::Out>, StoreError> {
        let mut out: Vec<Option<R::Out>> = users.iter().map(|_| None).collect();
        let mut left: Vec<usize> = (0..users.len()).collect();
        for _ in 0..2 {
            let mut moved = Vec::new();
            for (node, group) in self.by_master(users, &left)? {
                let names: Vec<&str> = group.iter().map(|&i| users[i].as_str()).collect();
                for (i, got) in group.into_iter().zip(self.read_node(&node, &names, read)?) {
                    match got {
                        Some(got) => out[i] = Some(got),
                        None => moved.push(i),
                    }
                }
            }
            left = moved;
            if left.is_empty() {
                return Ok(out.into_iter().flatten().collect());
            }
        }
        Err(StoreError::Moved(format!(
            "the slots of {} users kept moving",
            left.len()
        )))
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
    fn last_many(
        &self,
        users: &[String],
        watcher: Option<&str>,
    ) -> Result<Vec<(String, Presence)>, StoreError> {
        last_many(self, users, watcher, self.ttl_micros, &self.metrics)
    }

    fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError> {
        let began = Instant::now();
        let allowed = self.read(users, &Allowed { watcher });
        self.metrics
            .redis_call(RedisCall::Contacts)
            .observe(began.elapsed());
        allowed
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
            let feed = self.feeds.read().get(&node.addr).cloned();
            match (pong, feed.as_ref().filter(|f| f.is_up())) {
                (Err(e), _) => problems.push(ShardProblem::Failing(node.addr.clone(), e)),
                (Ok(_), None) => {
                    let lost = feed.and_then(|f| f.lost());
                    problems.push(ShardProblem::FeedDown(node.addr.clone(), lost))
                }
                (Ok(_), Some(_)) => {}
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
