//! The `redis-psubscribe` thread: one `PSUBSCRIBE` per process, fanning every user's pings
//! out to the local hub.
//!
//! It notices a dead or frozen connection by itself (a read timeout, and a `PING` whenever
//! the connection has been quiet), reconnects with capped exponential backoff and jitter, and
//! after every (re)subscription asks the `cached-reads` thread for the stored last ping of
//! each user that has local subscribers, so a ping published while the subscription was down
//! is not lost (that thread retries until it can read them). Subscribers discard what they
//! already have by sequence number.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::RedisStore;
use super::redis::parse_message;
use crate::cached::CachedReads;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ping::Event;
use crossbeam_channel::{Receiver, TryRecvError};

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether the subscription is up, for health checks; set only by the thread.
#[derive(Default)]
pub struct SubscriptionState(AtomicBool);

impl SubscriptionState {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records the new state; returns the old one.
    fn set(&self, up: bool) -> bool {
        self.0.swap(up, Ordering::Relaxed)
    }
}

/// Starts the thread. It runs until `shutdown` receives a message or is dropped.
pub fn spawn(
    store: Arc<RedisStore>,
    hub: Arc<Hub>,
    cached: CachedReads,
    shutdown: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let feed = Feed {
        store,
        hub,
        cached,
        shutdown,
    };
    thread::Builder::new()
        .name("redis-psubscribe".into())
        .spawn(move || feed.run())
}

struct Feed {
    store: Arc<RedisStore>,
    hub: Arc<Hub>,
    /// Where the resync after each (re)subscription asks for the watched users' last pings.
    cached: CachedReads,
    shutdown: Receiver<()>,
}

/// How a subscription session ended.
enum End {
    Shutdown,
    Lost(String),
}

impl Feed {
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut reported_down = false;
        let mut sessions = 0u64;
        loop {
            let error = match self.session(&mut backoff, &mut sessions) {
                End::Shutdown => break,
                End::Lost(error) => error,
            };
            Metrics::count(&self.store.metrics().redis_errors_total);
            let was_up = self.store.subscription().set(false);
            if was_up || !reported_down {
                log::warn!("redis subscription down: {error}; reconnecting");
                reported_down = true;
            } else {
                log::debug!("redis subscription still down: {error}");
            }
            // The wait is also the shutdown check: a message or a dropped sender ends it.
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if !matches!(
                self.shutdown.recv_timeout(wait),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            ) {
                break;
            }
        }
        self.store.subscription().set(false);
        log::debug!("redis subscription stopped");
    }

    /// Subscribes and delivers until the connection fails or shutdown is asked.
    fn session(&self, backoff: &mut Duration, sessions: &mut u64) -> End {
        let mut con = match self.store.connect() {
            Ok(con) => con,
            Err(e) => return End::Lost(e.to_string()),
        };
        let pattern = self.store.keys().pattern();
        if let Err(e) = psubscribe(&mut con, &pattern) {
            return End::Lost(e);
        }
        let mut pubsub = con.as_pubsub();
        log::info!("redis subscription up: PSUBSCRIBE {pattern}");
        if *sessions > 0 {
            Metrics::count(&self.store.metrics().redis_resubscribes_total);
        }
        *sessions += 1;
        *backoff = BACKOFF_MIN;
        self.store.subscription().set(true);
        self.resync();

        // The connection's read timeout is the tick: every quiet tick, check for shutdown
        // and PING; a PING that gets no answer within the timeout means the link is dead.
        loop {
            match self.shutdown.try_recv() {
                Err(TryRecvError::Empty) => {}
                _ => return End::Shutdown,
            }
            match pubsub.get_message() {
                Ok(msg) => self.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
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

    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(user) = self.store.keys().user_of_channel(channel) else {
            return;
        };
        if !self.hub.is_watched(user) {
            return; // most pings, on an instance whose watchers watch others
        }
        match std::str::from_utf8(payload).ok().and_then(parse_message) {
            Some(ping) => {
                self.hub.publish(user, Arc::new(Event::from(&ping)));
            }
            None => log::warn!("ignoring a malformed message on {channel:?}"),
        }
    }

    /// Asks for the stored last ping of every user with local subscribers.
    fn resync(&self) {
        let users = self.hub.users();
        if !users.is_empty() {
            log::info!("resyncing the last pings of {} watched users", users.len());
        }
        for user in &users {
            self.cached.request(user);
        }
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
fn jitter(base: Duration) -> Duration {
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
