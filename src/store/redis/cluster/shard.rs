//! One master's feed: the set of users this instance wants from it ([`ShardFeed`]), and its
//! `redis-ssubscribe` thread, which holds one connection with `SSUBSCRIBE` for each of them,
//! delivers their messages, and acts on what the node says of them.
//!
//! The commands for a change of the set are written by whichever thread has them (the
//! `redis-cluster` thread, or this one after a reconnect), under the lock that holds the set,
//! so a reconnect (which subscribes the whole set again) and a change cannot miss each other.
//! Every `ssubscribe` confirmation of a wanted user asks the `cached-reads` thread for that
//! user's stored last ping; a `sunsubscribe` the node sends of itself (the slot moved away) or
//! a `MOVED` refusal gives the users back to be assigned again by the corrected map.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use redis::{RedisError, Value};

use super::coordinator::Context;
use crate::store::StoreError;
use crate::store::redis::feed::deliver;
use crate::store::redis::feed::session::{Ended, Session, Up, reconnect, stopping};
use crate::store::redis::node::{Node, Redirect, Router};
use crate::store::redis::schema::Keys;
use crate::store::redis::slot::slot;
use crate::store::redis::tls::Wire;
use crate::worker::Worker;

/// One master's feed, as the other threads see it.
pub struct ShardFeed {
    pub node: Arc<Node>,
    subs: Mutex<Subs>,
    up: AtomicBool,
    /// Channels this feed's connection holds, as Redis last counted them.
    channels: AtomicU64,
    /// Why the last session was lost, until one is up again.
    lost: Mutex<Option<StoreError>>,
}

/// The users a master's feed should hold, and where to write commands for them.
struct Subs {
    wanted: HashSet<Arc<str>>,
    /// The write side of the feed's connection, while it is up.
    writer: Option<Wire>,
}

impl ShardFeed {
    pub fn new(node: Arc<Node>) -> ShardFeed {
        ShardFeed {
            node,
            subs: Mutex::new(Subs {
                wanted: HashSet::new(),
                writer: None,
            }),
            up: AtomicBool::new(false),
            channels: AtomicU64::new(0),
            lost: Mutex::new(None),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why the feed is down, if it is and the reason is known.
    pub fn lost(&self) -> Option<StoreError> {
        self.lost.lock().clone()
    }

    /// The users this feed holds or is about to.
    pub fn wanted(&self) -> Vec<Arc<str>> {
        self.subs.lock().wanted.iter().cloned().collect()
    }

    /// Takes up the users meant for this master and lets go of the others it holds.
    pub fn assign(&self, targets: &[(Arc<str>, Option<String>)], keys: &Keys) {
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

/// The `redis-ssubscribe` thread of one master.
struct Shard {
    context: Arc<Context>,
    state: Arc<ShardFeed>,
    /// Where users this feed could not keep (their slot moved) go back to be assigned.
    requeue: Sender<Arc<str>>,
}

/// Starts the `redis-ssubscribe` thread of `state`'s master; stopping it shuts its
/// connection down.
pub fn spawn(
    context: &Arc<Context>,
    state: Arc<ShardFeed>,
    requeue: Sender<Arc<str>>,
) -> std::io::Result<Worker> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let shard = Shard {
        context: Arc::clone(context),
        state: Arc::clone(&state),
        requeue,
    };
    Worker::spawn(
        format!("redis-ssubscribe {}", state.node.addr),
        move || shard.run(&stopped),
        move || {
            drop(stop);
            if let Some(writer) = &state.subs.lock().writer {
                let _ = writer.shutdown(Shutdown::Both);
            }
        },
    )
}

impl Shard {
    fn run(self, stop: &Receiver<()>) {
        let what = format!("redis subscription to {}", self.state.node.addr);
        reconnect(
            &what,
            stop,
            &self.context.metrics,
            |up| self.session(stop, up),
            |ended| {
                if let Ended::Lost(e) = ended {
                    *self.state.lost.lock() = Some(e.clone());
                }
                self.state.subs.lock().writer = None;
                let channels = self.state.channels.swap(0, Ordering::Relaxed);
                self.context
                    .metrics
                    .feed_channels
                    .fetch_sub(channels as i64, Ordering::Relaxed);
                if let Ended::Lost(_) = ended {
                    self.context.topology.mark_stale();
                }
                self.state.up.swap(false, Ordering::Relaxed)
            },
        );
    }

    /// Connects, subscribes every wanted user, and delivers until the connection fails or
    /// the feed is stopped.
    fn session(&self, stop: &Receiver<()>, up: &mut Up) -> Ended {
        let addr = &self.state.node.addr;
        let mut session = match Session::open(&self.state.node.connector, self.context.timeout) {
            Ok(session) => session,
            Err(e) => return Ended::Lost(e),
        };
        {
            let mut subs = self.state.subs.lock();
            subs.writer = match session.socket() {
                Ok(writer) => Some(writer),
                Err(e) => return Ended::Lost(RedisError::from(e).into()),
            };
            // Looked at once the stopper can shut the connection, so no stop falls between.
            if stopping(stop) {
                return Ended::Stopped;
            }
            let wanted: Vec<Arc<str>> = subs.wanted.iter().cloned().collect();
            subs.write(&commands("SSUBSCRIBE", &wanted, &self.context.keys), addr);
            log::info!(
                "redis subscription up: {} watched users at {addr}",
                wanted.len()
            );
        }
        up.subscribed();
        *self.state.lost.lock() = None;
        self.state.up.store(true, Ordering::Relaxed);
        let ping = redis::cmd("PING").get_packed_command();
        session.pump(
            stop,
            || {
                self.state.subs.lock().write(&ping, addr);
                Ok(())
            },
            |value| self.handle(value),
        )
    }

    /// Acts on one thing the node sent: a message, a confirmation, a refusal, a PONG. A
    /// refusal other than a redirect ends the session.
    fn handle(&self, value: Value) -> Result<(), StoreError> {
        let items = match value {
            Value::Array(items) | Value::Push { data: items, .. } => items,
            Value::ServerError(error) => return self.refused(error),
            _ => return Ok(()), // +PONG, while subscribed to nothing
        };
        let text = |i: usize| match items.get(i) {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
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
                if let Some(Value::Int(count)) = items.get(2)
                    && let Ok(count) = u64::try_from(*count)
                {
                    let before = self.state.channels.swap(count, Ordering::Relaxed);
                    context
                        .metrics
                        .feed_channels
                        .fetch_add(count as i64 - before as i64, Ordering::Relaxed);
                }
                if let Some(user) = context.keys.user_of_channel(channel) {
                    self.confirmed(kind, user);
                }
            }
            _ => {} // pong
        }
        Ok(())
    }

    /// The node confirmed a subscription of `user` (`kind` `ssubscribe`), or let go of it.
    fn confirmed(&self, kind: &str, user: &str) {
        let addr = &self.state.node.addr;
        let mut subs = self.state.subs.lock();
        let Some(user) = subs.wanted.get(user).cloned() else {
            log::debug!("{kind} of {user:?} at {addr}: not wanted");
            return;
        };
        if kind == "ssubscribe" {
            drop(subs);
            log::debug!("subscribed to {user:?} at {addr}: resyncing");
            self.context.cached.resync(&user);
        } else {
            // Not asked for: the node let go of the channel, its slot moved away.
            subs.wanted.remove(&user);
            drop(subs);
            log::info!("{addr} dropped the channel of {user:?}: its slot moved");
            self.context.topology.mark_stale();
            let _ = self.requeue.send(user);
        }
    }

    /// A refused `SSUBSCRIBE`: a `MOVED` (the slot is elsewhere) gives back the slot's
    /// users to be assigned again by the corrected map; anything else (a permission refused)
    /// loses the session, which is logged and tried again after a backoff.
    fn refused(&self, error: redis::ServerError) -> Result<(), StoreError> {
        let Some(Redirect::Moved(moved_slot, addr)) = Redirect::of(&error) else {
            log::warn!("{} refused a subscription: {error}", self.state.node.addr);
            return Err(error.into());
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
        Ok(())
    }
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
}
