//! The feed: the `redis-psubscribe` thread, one `PSUBSCRIBE` per process, handing every
//! instance's pings to the local hub. ("Feed" is always this Redis side; a local stream's
//! registration in the hub is a "subscriber".)
//!
//! It notices a dead or frozen connection by itself (a `PING` whenever the connection has
//! been quiet for the Redis timeout, [`session`]), reconnects with capped exponential backoff
//! and jitter, and after every (re)subscription asks the `cached-reads` thread for the stored
//! last ping of each user that has local subscribers, so a ping published while the feed was
//! down is not lost (that thread retries until it can read them). Subscribers discard what
//! they already have by sequence number.

pub mod session;

use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use redis::{RedisError, Value};

use self::session::{Ended, Session, Up, reconnect, stopping};
use super::connect::Connector;
use super::schema::{Keys, parse_message};
use super::tls::Wire;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::cached::CachedReads;
use crate::worker::Worker;

/// Whether the feed is subscribed, for health checks; and its socket, for the stopper.
#[derive(Default)]
pub struct FeedState {
    up: AtomicBool,
    socket: Mutex<Option<Wire>>,
    /// Why the last session was lost, until one is subscribed again.
    lost: Mutex<Option<StoreError>>,
}

impl FeedState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why the feed is down, if it is and the reason is known.
    pub fn lost(&self) -> Option<StoreError> {
        self.lost.lock().clone()
    }

    /// Ends the feed's connection, if it has one: it reconnects (to the connector's target
    /// now) and resubscribes.
    pub fn reconnect(&self) {
        if let Some(socket) = &*self.socket.lock() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Records the new state; returns the old one.
    fn set(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }
}

/// What the feed's thread needs: how to reach Redis, which channels, and where to deliver.
pub struct Feed {
    pub connector: Arc<Connector>,
    pub keys: Keys,
    /// Read timeout of the feed's connection: the tick after which it PINGs.
    pub timeout: Duration,
    pub state: Arc<FeedState>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    /// Where the resync after each (re)subscription asks for the watched users' last pings.
    pub cached: CachedReads,
}

impl Feed {
    /// Starts the `redis-psubscribe` thread; it runs until the worker is stopped.
    pub fn spawn(self) -> std::io::Result<Worker> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let state = Arc::clone(&self.state);
        Worker::spawn(
            "redis-psubscribe",
            move || self.run(&stopped),
            move || {
                drop(stop);
                if let Some(socket) = &*state.socket.lock() {
                    let _ = socket.shutdown(Shutdown::Both);
                }
            },
        )
    }

    fn run(self, stop: &Receiver<()>) {
        reconnect(
            "redis subscription",
            stop,
            &self.metrics,
            |up| self.session(stop, up),
            |ended| {
                if let Ended::Lost(e) = ended {
                    *self.state.lost.lock() = Some(e.clone());
                }
                *self.state.socket.lock() = None;
                self.metrics.feed_channels.store(0, Ordering::Relaxed);
                self.state.set(false)
            },
        );
    }

    /// Subscribes and delivers until the connection fails or the feed is stopped.
    fn session(&self, stop: &Receiver<()>, up: &mut Up) -> Ended {
        let mut session = match Session::open(&self.connector, self.timeout) {
            Ok(session) => session,
            Err(e) => return Ended::Lost(e),
        };
        // Handed to the stopper before looking whether it stopped, so no stop falls between.
        match session.socket() {
            Ok(socket) => *self.state.socket.lock() = Some(socket),
            Err(e) => return Ended::Lost(RedisError::from(e).into()),
        }
        if stopping(stop) {
            return Ended::Stopped;
        }
        let pattern = self.keys.pattern();
        let psubscribe = redis::cmd("PSUBSCRIBE").arg(&pattern).get_packed_command();
        if let Err(e) = session.write(&psubscribe) {
            return Ended::Lost(RedisError::from(e).into());
        }
        match session.read() {
            Ok(reply) if kind(&reply) == Some("psubscribe") => {}
            Ok(Value::ServerError(e)) => return Ended::Lost(e.into()),
            Ok(other) => return Ended::Lost(unexpected("PSUBSCRIBE", &other)),
            Err(_) if stopping(stop) => return Ended::Stopped,
            Err(e) => return Ended::Lost(e.into()),
        }
        log::info!("redis subscription up: PSUBSCRIBE {pattern}");
        up.subscribed();
        *self.state.lost.lock() = None;
        self.state.set(true);
        self.metrics.feed_channels.store(1, Ordering::Relaxed);
        self.resync();
        let ping = redis::cmd("PING").get_packed_command();
        let writer = match session.socket() {
            Ok(writer) => writer,
            Err(e) => return Ended::Lost(RedisError::from(e).into()),
        };
        session.pump(
            stop,
            || std::io::Write::write_all(&mut &writer, &ping),
            |value| match value {
                Value::ServerError(e) => Err(e.into()),
                Value::Array(items) | Value::Push { data: items, .. } => {
                    if let [
                        kind,
                        _pattern,
                        Value::BulkString(channel),
                        Value::BulkString(payload),
                    ] = &items[..]
                        && kind == &Value::BulkString(b"pmessage".to_vec())
                        && let Ok(channel) = std::str::from_utf8(channel)
                    {
                        deliver(&self.keys, &self.hub, &self.metrics, channel, payload);
                    }
                    Ok(()) // or a pong
                }
                _ => Ok(()),
            },
        )
    }

    /// Asks for the stored last ping of every user with local subscribers.
    fn resync(&self) {
        let users = self.hub.users();
        if !users.is_empty() {
            log::info!("resyncing the last pings of {} watched users", users.len());
        }
        for user in &users {
            self.cached.resync(user);
        }
    }
}

/// The kind of a pushed message (`pmessage`, `psubscribe`, `smessage`, ...): its first item.
pub(super) fn kind(value: &Value) -> Option<&str> {
    match value {
        Value::Array(items) | Value::Push { data: items, .. } => match items.first() {
            Some(Value::BulkString(kind)) => std::str::from_utf8(kind).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The error for a reply to `command` that is not what Redis sends.
fn unexpected(command: &'static str, reply: &Value) -> StoreError {
    let error = (
        redis::ErrorKind::UnexpectedReturnType,
        command,
        format!("not confirmed: {reply:?}"),
    );
    StoreError::Refused(error.into())
}

/// Hands a message from `channel` to the hub's subscribers of its user, if there are any.
pub(super) fn deliver(keys: &Keys, hub: &Hub, metrics: &Metrics, channel: &str, payload: &[u8]) {
    Metrics::count(&metrics.feed_messages_total);
    let Some(user) = keys.user_of_channel(channel) else {
        return;
    };
    if !hub.is_watched(user) {
        return; // most pings, on an instance whose watchers watch others
    }
    match std::str::from_utf8(payload).ok().and_then(parse_message) {
        Some(update) => {
            hub.publish_update(user, &update);
        }
        None => log::warn!("ignoring a malformed message on {channel:?}"),
    }
}
