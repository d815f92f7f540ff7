//! The cluster feed: one `redis-ssubscribe` thread per master, each holding `SSUBSCRIBE` for
//! exactly the users this instance's streams watch in that master's slots, and the
//! `redis-cluster` thread that keeps the slot map and tells each master's thread whom to
//! subscribe. An instance with no streams subscribes to nothing, and receives no pings.
//!
//! The hub names each user who gains a first local subscriber or loses the last; the
//! `redis-cluster` thread takes every name queued meanwhile and hands each master's thread its
//! part of the batch, which it subscribes or unsubscribes in one write (one command per slot,
//! as Redis asks). A master's thread reads replies and messages on its own connection; the
//! commands are written by whichever thread has them, under the lock that holds the thread's
//! set of wanted users, so a reconnect (which subscribes the whole set again) and a change
//! cannot miss each other.
//!
//! Every `ssubscribe` confirmation of a wanted user asks the `cached-reads` thread for the
//! user's stored last ping, for the user's subscribers: a ping published before the
//! subscription took (a new user, a reconnect, a failover, a slot that moved) still arrives.
//! Subscribers discard what they already have by sequence number.
//!
//! The slot map is asked for again when a call fails, a node answers `MOVED`, a node drops a
//! user's channel (its slot moved away), and every few seconds. When masters change, threads
//! start for new masters, stop for old ones, and every watched user is assigned again.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use parking_lot::{Mutex, RwLock};
use redis::Value;

use super::super::feed::{BACKOFF_MAX, BACKOFF_MIN, deliver, jitter};
use super::super::node::{Node, Redirect, Router};
use super::super::schema::Keys;
use super::super::slot::slot;
use super::topology::Topology;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::cached::CachedReads;
use crate::worker::{self, Worker};

/// How often the slot map is asked for when nothing prompts it.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How often while some slot has no master or a master's feed is down.
const REFRESH_WHILE_BROKEN: Duration = Duration::from_millis(500);
/// The least time between two refreshes, however often one is asked for.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Most users taken from the hub's queue in one batch.
const BATCH: usize = 10_000;

/// Each master's feed, by address: what health checks and `/metrics` read.
pub type FeedStates = Arc<RwLock<HashMap<String, Arc<ShardFeed>>>>;

/// What the cluster feed needs, shared by its threads.
pub struct Context {
    pub topology: Arc<Topology>,
    pub keys: Keys,
    /// Read timeout of each feed connection: the tick at which it checks for shutdown and
    /// PINGs.
    pub timeout: Duration,
    /// `user:pass`, `:pass` or `user`, for `AUTH`.
    pub userinfo: Option<String>,
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
                };
                coordinator.run(&changes, &self.wake, &shutdown);
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
}

impl Coordinator {
    fn run(&mut self, changes: &Receiver<Arc<str>>, wake: &Receiver<()>, stop: &Receiver<()>) {
        let mut last_refresh: Option<Instant> = None;
        let mut refresh_due = true;
        loop {
            if refresh_due {
                if let Some(at) = last_refresh {
                    std::thread::sleep(REFRESH_GAP.saturating_sub(at.elapsed()));
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
                    users.extend(changes.try_iter().take(BATCH));
                    self.assign(users);
                }
                recv(wake) -> _ => refresh_due = true,
                default(every) => refresh_due = true,
            }
        }
        let feeds: Vec<Worker> = self.feeds.drain().map(|(_, w)| w).collect();
        worker::stop_all(feeds);
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
                worker::stop_all(vec![feed]);
            }
        }
        for node in masters {
            if self.feeds.contains_key(&node.addr) {
                continue;
            }
            let state = Arc::new(ShardFeed::new(Arc::clone(&node)));
            match spawn_shard(&self.context, Arc::clone(&state), self.requeue.clone()) {
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
            users.extend(state.subs.lock().wanted.iter().cloned());
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

/// One master's feed, as the other threads see it.
pub struct ShardFeed {
    pub node: Arc<Node>,
    subs: Mutex<Subs>,
    up: AtomicBool,
    /// Channels this feed's connection holds, as Redis last counted them.
    channels: AtomicU64,
}

/// The users a master's feed should hold, and where to write commands for them.
struct Subs {
    wanted: HashSet<Arc<str>>,
    /// The write side of the feed's connection, while it is up.
    writer: Option<TcpStream>,
}

impl ShardFeed {
    fn new(node: Arc<Node>) -> ShardFeed {
        ShardFeed {
            node,
            subs: Mutex::new(Subs {
                wanted: HashSet::new(),
                writer: None,
            }),
            up: AtomicBool::new(false),
            channels: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Takes up the users meant for this master and lets go of the others it holds.
    fn assign(&self, targets: &[(Arc<str>, Option<String>)], keys: &Keys) {
        let mut subs = self.subs.lock();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (user, master) in targets {
            let here = master.as_deref() == Some(self.node.addr.as_str());
            match (here, subs.wanted.contains(user)) {
                (true, false) => add.push(Arc::clone(user)),
                (false, true) => remove.push(Arc::clone(user)),
                _ => {}
            }
        }
        for user in &remove {
            subs.wanted.remove(user);
        }
        subs.wanted.extend(add.iter().cloned());
        let mut commands = commands("SSUBSCRIBE", &add, keys);
        commands.extend(self::commands("SUNSUBSCRIBE", &remove, keys));
        subs.write(&commands, &self.node.addr);
    }
}

impl Subs {
    /// Writes `commands` on the connection, if it is up. A failed write closes the
    /// connection; its thread then reconnects and subscribes the whole set again.
    fn write(&mut self, commands: &[u8], addr: &str) {
        if commands.is_empty() {
            return;
        }
        if let Some(writer) = &mut self.writer
            && let Err(e) = writer.write_all(commands)
        {
            log::warn!("cannot write to the feed connection of {addr}: {e}");
            let _ = writer.shutdown(Shutdown::Both);
            self.writer = None;
        }
    }
}

/// `command` for `users`' channels: one command per slot (a cluster refuses channels of
/// different slots in one), packed for one write.
fn commands(command: &str, users: &[Arc<str>], keys: &Keys) -> Vec<u8> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for user in users {
        let channel = keys.channel(user);
        by_slot
            .entry(slot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let mut packed = Vec::new();
    for channels in by_slot.values() {
        packed.extend(redis::cmd(command).arg(channels).get_packed_command());
    }
    packed
}

/// How a feed session ended.
enum End {
    Stopped,
    Lost(String),
}

/// The `redis-ssubscribe` thread of one master.
struct Shard {
    context: Arc<Context>,
    state: Arc<ShardFeed>,
    requeue: Sender<Arc<str>>,
}

fn spawn_shard(
    context: &Arc<Context>,
    state: Arc<ShardFeed>,
    requeue: Sender<Arc<str>>,
) -> std::io::Result<Worker> {
    let stopping = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let shard = Shard {
        context: Arc::clone(context),
        state: Arc::clone(&state),
        requeue,
    };
    let flag = Arc::clone(&stopping);
    Worker::spawn(
        format!("redis-ssubscribe {}", state.node.addr),
        move || shard.run(&flag, &stopped),
        move || {
            stopping.store(true, Ordering::Relaxed);
            // Wakes a read in progress; a wait between attempts ends with the channel.
            if let Some(writer) = &state.subs.lock().writer {
                let _ = writer.shutdown(Shutdown::Both);
            }
            drop(stop);
        },
    )
}

impl Shard {
    fn run(self, stopping: &AtomicBool, stopped: &Receiver<()>) {
        let addr = self.state.node.addr.clone();
        let mut backoff = BACKOFF_MIN;
        let mut sessions = 0u64;
        let mut reported_down = false;
        loop {
            let end = self.session(stopping, &mut backoff, &mut sessions);
            self.state.subs.lock().writer = None;
            let was_up = self.state.up.swap(false, Ordering::Relaxed);
            let channels = self.state.channels.swap(0, Ordering::Relaxed);
            self.context
                .metrics
                .feed_channels
                .fetch_sub(channels as i64, Ordering::Relaxed);
            let error = match end {
                End::Stopped => break,
                End::Lost(error) => error,
            };
            Metrics::count(&self.context.metrics.redis_errors_total);
            self.context.topology.mark_stale();
            if was_up || !reported_down {
                log::warn!("redis subscription to {addr} down: {error}; reconnecting");
                reported_down = true;
            } else {
                log::debug!("redis subscription to {addr} still down: {error}");
            }
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if !matches!(stopped.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
                break;
            }
        }
        log::debug!("redis subscription to {addr} stopped");
    }

    /// Connects, subscribes every wanted user, and delivers until the connection fails or
    /// the feed is stopped.
    fn session(&self, stopping: &AtomicBool, backoff: &mut Duration, sessions: &mut u64) -> End {
        let lost = |e: std::io::Error| End::Lost(e.to_string());
        let timeout = self.context.timeout;
        let stream = match connect(&self.state.node.addr, timeout) {
            Ok(stream) => stream,
            Err(e) => return lost(e),
        };
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(read) => read,
            Err(e) => return lost(e),
        });
        let mut parser = redis::Parser::new();
        if let Some(auth) = auth_command(self.context.userinfo.as_deref()) {
            let mut writer = &stream;
            if let Err(e) = writer.write_all(&auth) {
                return lost(e);
            }
            match parser.parse_value(&mut reader) {
                Ok(Value::Okay | Value::SimpleString(_)) => {}
                Ok(other) => return End::Lost(format!("AUTH refused: {other:?}")),
                Err(e) => return End::Lost(format!("AUTH: {e}")),
            }
        }
        {
            let mut subs = self.state.subs.lock();
            if stopping.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            let wanted: Vec<Arc<str>> = subs.wanted.iter().cloned().collect();
            subs.writer = match stream.try_clone() {
                Ok(writer) => Some(writer),
                Err(e) => return lost(e),
            };
            subs.write(
                &commands("SSUBSCRIBE", &wanted, &self.context.keys),
                &self.state.node.addr,
            );
            log::info!(
                "redis subscription up: {} watched users at {}",
                wanted.len(),
                self.state.node.addr
            );
        }
        if *sessions > 0 {
            Metrics::count(&self.context.metrics.redis_resubscribes_total);
        }
        *sessions += 1;
        *backoff = BACKOFF_MIN;
        self.state.up.store(true, Ordering::Relaxed);

        // The read timeout is the tick: a quiet tick sends a PING; a second quiet tick with
        // the PING unanswered means the link is dead.
        let mut ping_sent = false;
        loop {
            if stopping.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            match parser.parse_value(&mut reader) {
                Ok(value) => {
                    ping_sent = false;
                    self.handle(value);
                }
                Err(e) if e.is_timeout() && !ping_sent => {
                    let ping = redis::cmd("PING").get_packed_command();
                    self.state.subs.lock().write(&ping, &self.state.node.addr);
                    ping_sent = true;
                }
                Err(e) if e.is_timeout() => {
                    return End::Lost(format!("no answer to PING in {timeout:?}"));
                }
                Err(e) if stopping.load(Ordering::Relaxed) => {
                    log::debug!("feed of {} closed: {e}", self.state.node.addr);
                    return End::Stopped;
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
    }

    /// Acts on one thing the node sent: a message, a confirmation, a refusal, a PONG.
    fn handle(&self, value: Value) {
        let items = match value {
            Value::Array(items) | Value::Push { data: items, .. } => items,
            Value::ServerError(error) => return self.refused(&error),
            _ => return, // +PONG, while subscribed to nothing
        };
        let text = |i: usize| match items.get(i) {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        };
        let count = || match items.get(2) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let context = &self.context;
        match (text(0), text(1)) {
            (Some("smessage"), Some(channel)) => {
                let payload = match items.get(2) {
                    Some(Value::BulkString(payload)) => payload.as_slice(),
                    _ => &[],
                };
                deliver(
                    &context.keys,
                    &context.hub,
                    &context.metrics,
                    channel,
                    payload,
                );
            }
            (Some(kind @ ("ssubscribe" | "sunsubscribe")), Some(channel)) => {
                if let Some(count) = count() {
                    let before = self.state.channels.swap(count, Ordering::Relaxed);
                    context
                        .metrics
                        .feed_channels
                        .fetch_add(count as i64 - before as i64, Ordering::Relaxed);
                }
                let Some(user) = context.keys.user_of_channel(channel) else {
                    return;
                };
                let mut subs = self.state.subs.lock();
                let Some(user) = subs.wanted.get(user).cloned() else {
                    log::debug!("{kind} of {user:?} at {}: not wanted", self.state.node.addr);
                    return;
                };
                if kind == "ssubscribe" {
                    drop(subs);
                    log::debug!(
                        "subscribed to {user:?} at {}: resyncing",
                        self.state.node.addr
                    );
                    context.cached.resync(&user);
                } else {
                    // Not asked for: the node let go of the channel, its slot moved away.
                    subs.wanted.remove(&user);
                    drop(subs);
                    log::info!(
                        "{} dropped the channel of {user:?}: its slot moved",
                        self.state.node.addr
                    );
                    context.topology.mark_stale();
                    let _ = self.requeue.send(user);
                }
            }
            _ => {} // pong
        }
    }

    /// A refused `SSUBSCRIBE`: a `MOVED` (the slot is elsewhere) gives back the slot's
    /// users to be assigned again by the corrected map; anything else is logged.
    fn refused(&self, error: &redis::ServerError) {
        let Some(Redirect::Moved(moved_slot, addr)) = Redirect::of(error) else {
            log::warn!("{} refused a subscription: {error}", self.state.node.addr);
            return;
        };
        self.context.topology.moved(moved_slot, addr);
        let keys = &self.context.keys;
        let users: Vec<Arc<str>> = {
            let mut subs = self.state.subs.lock();
            let users: Vec<Arc<str>> = subs
                .wanted
                .iter()
                .filter(|u| slot(keys.channel(u).as_bytes()) == moved_slot)
                .cloned()
                .collect();
            for user in &users {
                subs.wanted.remove(user);
            }
            users
        };
        log::info!(
            "{} says slot {moved_slot} is at {addr}: moving {} users",
            self.state.node.addr,
            users.len()
        );
        for user in users {
            let _ = self.requeue.send(user);
        }
    }
}

/// A TCP connection to `addr`, within `timeout`, whose reads time out after `timeout`.
fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for resolved in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing"))))
}

/// `AUTH` for the URL's `user:pass` (or `:pass`), percent-decoded as the redis crate does
/// for other connections; none for no password.
fn auth_command(userinfo: Option<&str>) -> Option<Vec<u8>> {
    let (user, pass) = userinfo?.split_once(':')?;
    let (user, pass) = (percent_decode(user), percent_decode(pass));
    let mut auth = redis::cmd("AUTH");
    if !user.is_empty() {
        auth.arg(user);
    }
    Some(auth.arg(pass).get_packed_command())
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_one_command_per_slot() {
        let keys = Keys::cluster("hb:");
        let users: Vec<Arc<str>> = ["alice", "bob", "alice}x"]
            .iter()
            .map(|u| Arc::from(*u))
            .collect();
        let packed = String::from_utf8(commands("SSUBSCRIBE", &users, &keys)).unwrap();
        // alice and alice}x share a tag, hence a slot; bob is in another.
        assert_eq!(packed.matches("SSUBSCRIBE").count(), 2, "{packed}");
        assert!(packed.contains("hb:ping:{u:alice}x}"), "{packed}");
        assert!(commands("SUNSUBSCRIBE", &[], &keys).is_empty());
    }

    #[test]
    fn auth_takes_the_urls_credentials_percent_decoded() {
        let auth = |u: Option<&str>| auth_command(u).map(|c| String::from_utf8(c).unwrap());
        assert_eq!(
            auth(Some("u:p%40ss")).unwrap(),
            "*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$4\r\np@ss\r\n"
        );
        assert_eq!(
            auth(Some(":pw")).unwrap(),
            "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
        assert_eq!(auth(Some("user")), None);
        assert_eq!(auth(None), None);
    }
}
