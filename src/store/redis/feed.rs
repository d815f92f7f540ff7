//! The feed: the `redis-psubscribe` thread, one `PSUBSCRIBE` per process, handing every
//! instance's pings to the local hub. ("Feed" is always this Redis side; a local stream's
//! registration in the hub is a "subscriber".)
//!
//! It notices a dead or frozen connection by itself (a read timeout, and a `PING` whenever
//! the connection has been quiet), reconnects with capped exponential backoff and jitter, and
//! after every (re)subscription asks the `cached-reads` thread for the stored last ping of
//! each user that has local subscribers, so a ping published while the feed was down is not
//! lost (that thread retries until it can read them). Subscribers discard what they already
//! have by sequence number.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::connect::Connector;
use super::schema::{Keys, parse_message};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::cached::CachedReads;
use crate::worker::Worker;

/// First and longest wait between reconnection attempts.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether the feed is subscribed, for health checks; set only by the feed's thread.
#[derive(Default)]
pub struct FeedState(AtomicBool);

impl FeedState {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records the new state; returns the old one.
    fn set(&self, up: bool) -> bool {
        self.0.swap(up, Ordering::Relaxed)
    }
}

/// What the feed's thread needs: how to reach Redis, which channels, and where to deliver.
pub struct Feed {
    pub connector: Arc<Connector>,
    pub keys: Keys,
    /// Read timeout of the feed's connection: the tick at which it checks for shutdown and PINGs.
    pub timeout: Duration,
    pub state: Arc<FeedState>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    /// Where the resync after each (re)subscription asks for the watched users' last pings.
    pub cached: CachedReads,
}

/// How a feed session ended.
enum End {
    Shutdown,
    Lost(String),
}

impl Feed {
    /// Starts the `redis-psubscribe` thread; it runs until the worker is stopped.
    pub fn spawn(self) -> std::io::Result<Worker> {
        let (stop, shutdown) = crossbeam_channel::bounded::<()>(0);
        Worker::spawn(
            "redis-psubscribe",
            move || self.run(&shutdown),
            move || drop(stop),
        )
    }

    fn run(self, shutdown: &Receiver<()>) {
        let mut backoff = BACKOFF_MIN;
        let mut reported_down = false;
        let mut sessions = 0u64;
        loop {
            let error = match self.session(shutdown, &mut backoff, &mut sessions) {
                End::Shutdown => break,
                End::Lost(error) => error,
            };
            Metrics::count(&self.metrics.redis_errors_total);
            self.metrics.feed_channels.store(0, Ordering::Relaxed);
            let was_up = self.state.set(false);
            if was_up || !reported_down {
                log::warn!("redis subscription down: {error}; reconnecting");
                reported_down = true;
            } else {
                log::debug!("redis subscription still down: {error}");
            }
            // The wait is also the shutdown check: a message or a dropped sender ends it.
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if !matches!(shutdown.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
                break;
            }
        }
        self.state.set(false);
        self.metrics.feed_channels.store(0, Ordering::Relaxed);
        log::debug!("redis subscription stopped");
    }

    /// Subscribes and delivers until the connection fails or shutdown is asked.
    fn session(&self, shutdown: &Receiver<()>, backoff: &mut Duration, sessions: &mut u64) -> End {
        let mut con = match self.connector.connect(self.timeout) {
            Ok(con) => con,
            Err(e) => return End::Lost(e.to_string()),
        };
        let pattern = self.keys.pattern();
        if let Err(e) = psubscribe(&mut con, &pattern) {
            return End::Lost(e);
        }
        let mut pubsub = con.as_pubsub();
        log::info!("redis subscription up: PSUBSCRIBE {pattern}");
        if *sessions > 0 {
            Metrics::count(&self.metrics.redis_resubscribes_total);
        }
        *sessions += 1;
        *backoff = BACKOFF_MIN;
        self.state.set(true);
        self.metrics.feed_channels.store(1, Ordering::Relaxed);
        self.resync();

        // The connection's read timeout is the tick: every quiet tick, check for shutdown
        // and PING; a PING that gets no answer within the timeout means the link is dead.
        loop {
            match shutdown.try_recv() {
                Err(TryRecvError::Empty) => {}
                _ => return End::Shutdown,
            }
            match pubsub.get_message() {
                Ok(msg) => deliver(
                    &self.keys,
                    &self.hub,
                    &self.metrics,
                    msg.get_channel_name(),
                    msg.get_payload_bytes(),
                ),
                Err(e) if e.is_timeout() => {
                    let pong = pubsub
                        .ping::<redis::Value>()
                        .and_then(|v| v.extract_error());
                    if let Err(e) = pong {
                        return End::Lost(format!("no answer to PING: {e}"));
                    }
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
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
        Some(ping) => {
            hub.publish_ping(user, &ping);
        }
        None => log::warn!("ignoring a malformed message on {channel:?}"),
    }
}

/// Sends `PSUBSCRIBE pattern` and checks Redis confirmed it. (The redis crate's
/// `PubSub::psubscribe` returns `Ok` whatever the reply, a `NOPERM` refusal included.)
fn psubscribe(con: &mut redis::Connection, pattern: &str) -> Result<(), String> {
    let reply: redis::Value = redis::cmd("PSUBSCRIBE")
        .arg(pattern)
        .query(con)
        .map_err(|e| format!("PSUBSCRIBE refused: {e}"))?;
    match &reply {
        redis::Value::Array(items) | redis::Value::Push { data: items, .. }
            if items.first() == Some(&redis::Value::BulkString(b"psubscribe".to_vec())) =>
        {
            Ok(())
        }
        other => Err(format!("PSUBSCRIBE not confirmed: {other:?}")),
    }
}

/// `base` scaled by a random factor in [0.5, 1.0), so instances do not reconnect in step.
pub(super) fn jitter(base: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    base.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_all_of_the_base() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(1) && d < Duration::from_secs(2),
                "{d:?}"
            );
        }
    }
}
