//! The cluster feed's `redis-cluster` thread: keeps the slot map, a feed per master
//! ([`shard`](super::shard)), and tells each master's feed whom to subscribe. An instance with
//! no streams subscribes to nothing, and receives no pings.
//!
//! The hub names each user who gains a first local subscriber or loses the last; this thread
//! takes every name queued meanwhile and hands each master's feed its part of the batch,
//! which it subscribes or unsubscribes in one write.
//!
//! The slot map is asked for again when a call fails, a node answers `MOVED`, a node drops a
//! user's channel (its slot moved away), and every few seconds. When masters change, feeds
//! start for new masters, stop for old ones, and every watched user is assigned again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use parking_lot::RwLock;

use super::shard::{self, ShardFeed};
use super::topology::Topology;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::cached::CachedReads;
use crate::store::redis::node::Node;
use crate::store::redis::schema::Keys;
use crate::worker::{self, Worker};

/// How often the slot map is asked for when nothing prompts it.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How often while some slot has no master or a master's feed is down.
const REFRESH_WHILE_BROKEN: Duration = Duration::from_millis(500);
/// The least time between two refreshes, however often one is asked for.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Most users taken from the hub's queue at once.
const MAX_CHANGES: usize = 10_000;

/// Each master's feed, by address: what health checks and `/metrics` read.
pub type FeedStates = Arc<RwLock<HashMap<String, Arc<ShardFeed>>>>;

/// What the cluster feed needs, shared by its threads.
pub struct Context {
    pub topology: Arc<Topology>,
    pub keys: Keys,
    /// Read timeout of each feed connection: the tick after which it PINGs.
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub cached: CachedReads,
}

/// The `redis-cluster` thread's start: the hub's changes, and the topology's wake-ups.
pub struct ClusterFeed {
    pub context: Arc<Context>,
    pub states: FeedStates,
    /// Told whenever the topology may be stale.
    pub wake: Receiver<()>,
}

impl ClusterFeed {
    /// Starts the `redis-cluster` thread, which starts and stops the masters' threads.
    pub fn spawn(self) -> std::io::Result<Worker> {
        let (changed, changes) = crossbeam_channel::unbounded();
        self.context.hub.report_changes(changed.clone());
        let (stop, shutdown) = crossbeam_channel::bounded::<()>(0);
        Worker::spawn(
            "redis-cluster",
            move || {
                let mut coordinator = Coordinator {
                    context: self.context,
                    states: self.states,
                    feeds: HashMap::new(),
                    requeue: changed,
                    version: 0,
                    panicked: Vec::new(),
                };
                coordinator.run(&changes, &self.wake, &shutdown);
                // Reported through this thread's own join, so the exit status shows it.
                let panicked = coordinator.panicked;
                assert!(panicked.is_empty(), "feeds panicked: {panicked:?}");
            },
            move || drop(stop),
        )
    }
}

struct Coordinator {
    context: Arc<Context>,
    states: FeedStates,
    feeds: HashMap<String, Worker>,
    /// Where a master's thread sends back users it could not keep (their slot moved).
    requeue: Sender<Arc<str>>,
    /// The slot map version the feeds were last arranged for.
    version: u64,
    /// Feeds stopped so far whose thread had panicked.
    panicked: Vec<String>,
}

impl Coordinator {
    fn run(&mut self, changes: &Receiver<Arc<str>>, wake: &Receiver<()>, stop: &Receiver<()>) {
        let mut last_refresh: Option<Instant> = None;
        let mut refresh_due = true;
        loop {
            if refresh_due {
                if let Some(at) = last_refresh {
                    let gap = REFRESH_GAP.saturating_sub(at.elapsed());
                    if !matches!(stop.recv_timeout(gap), Err(RecvTimeoutError::Timeout)) {
                        break;
                    }
                }
                self.refresh();
                last_refresh = Some(Instant::now());
                refresh_due = false;
            }
            let every = match self.broken() {
                true => REFRESH_WHILE_BROKEN,
                false => REFRESH_EVERY,
            };
            select! {
                recv(stop) -> _ => break,
                recv(changes) -> user => {
                    let Ok(user) = user else { break };
                    let mut users = vec![user];
                    users.extend(changes.try_iter().take(MAX_CHANGES));
                    self.assign(users);
                }
                recv(wake) -> _ => refresh_due = true,
                default(every) => refresh_due = true,
            }
        }
        let feeds: Vec<Worker> = self.feeds.drain().map(|(_, w)| w).collect();
        self.panicked.extend(worker::stop_all(feeds));
        self.states.write().clear();
    }

    /// Whether some slot has no master, or some master's feed is down.
    fn broken(&self) -> bool {
        let uncovered = self.context.topology.read(|map| map.uncovered());
        uncovered > 0 || self.states.read().values().any(|s| !s.is_up())
    }

    /// Asks for the slot map; when it changed, arranges the feeds for it.
    fn refresh(&mut self) {
        if let Err(e) = self.context.topology.refresh() {
            log::warn!("{e}");
        }
        let (version, masters) = self.context.topology.read(|map| {
            let masters: Vec<Arc<Node>> = map.masters().to_vec();
            (map.version, masters)
        });
        if version == self.version {
            return;
        }
        self.version = version;
        let current: HashSet<&str> = masters.iter().map(|n| n.addr.as_str()).collect();
        let gone: Vec<String> = self
            .feeds
            .keys()
            .filter(|addr| !current.contains(addr.as_str()))
            .cloned()
            .collect();
        for addr in gone {
            self.states.write().remove(&addr);
            if let Some(feed) = self.feeds.remove(&addr) {
                log::info!("redis cluster: {addr} is no longer a master; its feed stops");
                self.panicked.extend(worker::stop_all(vec![feed]));
            }
        }
        for node in masters {
            if self.feeds.contains_key(&node.addr) {
                continue;
            }
            let state = Arc::new(ShardFeed::new(Arc::clone(&node)));
            match shard::spawn(&self.context, Arc::clone(&state), self.requeue.clone()) {
                Ok(worker) => {
                    self.states.write().insert(node.addr.clone(), state);
                    self.feeds.insert(node.addr.clone(), worker);
                }
                Err(e) => log::error!("cannot start the feed of {}: {e}", node.addr),
            }
        }
        // Every watched user, and every user some feed holds, goes where the map says now.
        let mut users = self.context.hub.users();
        for state in self.states.read().values() {
            users.extend(state.wanted());
        }
        self.assign(users);
    }

    /// Subscribes each watched user of `users` at the master of the user's slot, and
    /// unsubscribes every other subscription of them.
    fn assign(&self, users: Vec<Arc<str>>) {
        let context = &self.context;
        let mut seen = HashSet::with_capacity(users.len());
        let targets: Vec<(Arc<str>, Option<String>)> = users
            .into_iter()
            .filter(|user| seen.insert(Arc::clone(user)))
            .map(|user| {
                let master = match context.hub.is_watched(&user) {
                    true => context
                        .topology
                        .master_for(&context.keys.channel(&user))
                        .map(|node| node.addr.clone()),
                    false => None,
                };
                (user, master)
            })
            .collect();
        for state in self.states.read().values() {
            state.assign(&targets, &context.keys);
        }
    }
}
