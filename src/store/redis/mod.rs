//! The Redis store: last pings in hashes, delivery by `PUBLISH`.
//!
//! Parts, none of which imports this file: [`schema`] (keys, channels, messages and the record
//! script's arguments), [`script`] (the record script), [`connect`] (connections under a
//! deadline), [`pool`] (cached reads and health checks), [`writer`] (the pipelining
//! `redis-writer` threads that store pings) and [`feed`] (the `redis-psubscribe` thread that
//! brings every instance's pings to the local hub). This file ties them into a [`Store`].

pub mod acl;
pub mod cluster;
mod connect;
pub mod feed;
mod node;
mod pool;
mod read;
pub mod schema;
pub mod script;
pub mod sentinel;
mod slot;
pub mod tls;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use self::connect::Connector;
use self::feed::{Feed, FeedState};
use self::node::{Node, OneNode, Reach};
use self::read::{ALLOWED_SCRIPT, Reader, UserRead, last_many, parse_all, parse_allowed};
use self::schema::{Keys, Record};
use self::script::RecordScript;
use self::sentinel::{Follow, Sentinels};
use self::writer::Writers;
use super::cached::CachedReads;
use super::{Kind, Store, StoreError, Unhealthy};
use crate::config::{SentinelConfig, StoreConfig};
use crate::hub::Hub;
use crate::metrics::{Metrics, RedisCall};
use crate::presence::{Presence, Rules};
use crate::worker::Worker;
use crossbeam_channel::Receiver;
use parking_lot::Mutex;

/// How heartbeat uses Redis, on one server or on each node of a cluster.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub key_prefix: String,
    /// Most pooled connections (reads and health checks), per node.
    pub pool_size: usize,
    /// Connect, read and write timeout, and each ping's deadline.
    pub timeout: Duration,
    /// Replicas that must have a ping (Redis `WAIT`) before it is answered as stored.
    pub wait_replicas: u32,
    /// The presence rules the record script applies.
    pub presence: Rules,
    /// TLS, for a `rediss://` or `clusters://` store.
    pub tls: Option<Arc<self::tls::Tls>>,
}

impl RedisOptions {
    /// How to reach each node.
    fn reach(&self) -> Reach {
        Reach {
            pool_size: self.pool_size,
            timeout: self.timeout,
            tls: self.tls.clone(),
        }
    }
}

/// The sentinels of a store under Sentinel, and the failures that ask for the master again
/// (taken by the `redis-sentinel` thread when the feed starts).
type Sentinel = (Arc<Sentinels>, Mutex<Option<Receiver<()>>>);

/// Last pings in Redis, shared by every instance on the same Redis and prefix.
pub struct RedisStore {
    keys: Keys,
    node: Arc<Node>,
    writers: Writers,
    timeout: Duration,
    /// The device TTL, for presences stored before there were devices.
    ttl_micros: u64,
    feed: Arc<FeedState>,
    metrics: Arc<Metrics>,
    /// Under Sentinel: the sentinels, and the failures that ask for the master again (taken
    /// by the `redis-sentinel` thread when the feed starts).
    sentinel: Option<Sentinel>,
}

impl RedisStore {
    /// A store on the Redis at `url` (already validated by the configuration), with its
    /// `redis-writer` threads. Connections are made on first use, so this succeeds while
    /// Redis is down.
    pub fn start(
        url: &str,
        options: &RedisOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(RedisStore, Worker), RedisError> {
        let node = Arc::new(Node::new(url, url, &options.reach())?);
        RedisStore::on(node, None, options, metrics)
    }

    /// A store on the master that `config`'s sentinels name, found now (a warning if none
    /// is) and followed by the `redis-sentinel` thread once the feed starts.
    pub fn start_sentinel(
        config: &SentinelConfig,
        options: &RedisOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(RedisStore, Worker), RedisError> {
        let (failed, failures) = crossbeam_channel::bounded(1);
        let url = config.master_url("localhost:6379");
        let tls = options.tls.as_ref();
        let connector = Arc::new(Connector::following(&url, options.timeout, tls, failed)?);
        let sentinels = Arc::new(Sentinels::new(config, options.timeout, tls)?);
        match sentinels.find() {
            Ok((host, port)) => {
                connector.retarget(Some((&host, port)))?;
                log::info!("sentinel: the master of {} is {host}:{port}", config.master);
            }
            Err(e) => log::warn!("sentinel: no master of {} at start: {e}", config.master),
        }
        let shown = StoreConfig::Sentinel(config.clone()).to_string();
        let node = Arc::new(Node::with(&shown, connector, &options.reach()));
        let sentinel = (sentinels, Mutex::new(Some(failures)));
        RedisStore::on(node, Some(sentinel), options, metrics)
    }

    fn on(
        node: Arc<Node>,
        sentinel: Option<Sentinel>,
        options: &RedisOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(RedisStore, Worker), RedisError> {
        let router = Arc::new(OneNode(Arc::clone(&node)));
        let script = RecordScript::new(&options.presence);
        let nodes = [Arc::clone(&node)];
        let (writers, worker) =
            Writers::start(router, &nodes, options.wait_replicas, script, &metrics)?;
        let store = RedisStore {
            node,
            keys: Keys::new(&options.key_prefix),
            writers,
            timeout: options.timeout,
            ttl_micros: options.presence.ttl_micros(),
            feed: Arc::default(),
            metrics,
            sentinel,
        };
        Ok((store, worker))
    }

    /// One `PING` on a pooled connection: the health check's, and at start, over TLS, what
    /// tells a refused certificate (which stops the start) from a Redis not up yet.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.with(|con| redis::cmd("PING").query::<String>(con))
            .map(drop)
    }

    /// Starts the `redis-psubscribe` thread, which hands this store's pings, from every
    /// instance, to `hub`, and asks `cached` to resync after each (re)subscription.
    pub fn start_feed(&self, hub: Arc<Hub>, cached: CachedReads) -> std::io::Result<Vec<Worker>> {
        let mut workers = Vec::new();
        if let Some((sentinels, failures)) = &self.sentinel
            && let Some(failures) = failures.lock().take()
        {
            let feed = Arc::clone(&self.feed);
            let follow = Follow {
                sentinels: Arc::clone(sentinels),
                master: Arc::clone(&self.node.connector),
                failures,
                switched: Box::new(move || feed.reconnect()),
                metrics: Arc::clone(&self.metrics),
            };
            workers.push(follow.spawn()?);
        }
        let feed = Feed {
            connector: Arc::clone(&self.node.connector),
            keys: self.keys.clone(),
            timeout: self.timeout,
            state: Arc::clone(&self.feed),
            metrics: Arc::clone(&self.metrics),
            hub,
            cached,
        };
        workers.push(feed.spawn()?);
        Ok(workers)
    }

    /// Runs `f` on a pooled connection, counting failures.
    fn with<T>(
        &self,
        f: impl FnMut(&mut redis::Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let result = self.node.pool.with(f);
        if result.is_err() {
            Metrics::count(&self.metrics.redis_errors_total);
        }
        result
    }
}

impl Reader for RedisStore {
    /// In one round trip.
    fn read<R: UserRead>(&self, users: &[String], read: &R) -> Result<Vec<R::Out>, StoreError> {
        let mut pipe = redis::pipe();
        for user in users {
            read.add(&self.keys, &mut pipe, user);
        }
        let replies = self.with(|con| pipe.query::<Vec<Value>>(con))?;
        Ok(parse_all(read, users, replies)?)
    }
}

impl Store for RedisStore {
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

    fn last_many(
        &self,
        users: &[String],
        watcher: Option<&str>,
    ) -> Result<Vec<(String, Presence)>, StoreError> {
        last_many(self, users, watcher, self.ttl_micros, &self.metrics)
    }

    fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError> {
        Ok(self.allowed_many(&[(watcher, users)])?.remove(0))
    }

    /// One script call per check, all in one pipeline.
    fn allowed_many(&self, checks: &[(&str, &[String])]) -> Result<Vec<Vec<bool>>, StoreError> {
        let mut pipe = redis::pipe();
        for (watcher, users) in checks {
            let eval = pipe.cmd("EVAL").arg(ALLOWED_SCRIPT).arg(users.len());
            for user in *users {
                eval.arg(self.keys.watchers(user));
            }
            eval.arg(*watcher);
        }
        let began = Instant::now();
        let replies = self.with(|con| pipe.query::<Vec<String>>(con));
        self.metrics
            .redis_call(RedisCall::Contacts)
            .observe(began.elapsed());
        let replies = replies?;
        let parse = |(&(watcher, users), reply): (&(&str, &[String]), String)| {
            parse_allowed(users, watcher, &reply).map_err(StoreError::from)
        };
        checks.iter().zip(replies).map(parse).collect()
    }

    fn kind(&self) -> Kind {
        Kind::Redis
    }

    fn health(&self) -> Result<(), Unhealthy> {
        if !self.feed.is_up() {
            return Err(Unhealthy::FeedDown(self.feed.lost()));
        }
        let began = Instant::now();
        let pong = self.probe();
        self.metrics
            .redis_call(RedisCall::Health)
            .observe(began.elapsed());
        pong.map_err(Unhealthy::Unreachable)
    }

    fn master(&self) -> Option<Option<String>> {
        self.sentinel.as_ref().map(|_| self.node.connector.target())
    }

    fn feed_up(&self) -> Option<bool> {
        Some(self.feed.is_up())
    }
}
