//! What both feeds share: one connection that Redis pushes messages on ([`Session`]), read
//! with the crate's RESP parser and kept alive with `PING`s when quiet; and the loop that
//! opens sessions again after a loss, with capped exponential backoff and jitter
//! ([`reconnect`]).
//!
//! A feed is stopped by a message: its stopper drops the sender of `stop` and shuts down the
//! session's socket, which wakes a read in progress; the session, seeing its read fail,
//! finds `stop` disconnected and ends as stopped rather than lost. A wait between sessions is
//! a receive on `stop` with a timeout, which the drop ends at once.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{self, BufReader, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use redis::{RedisError, Value};

use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::redis::connect::Connector;
use crate::store::redis::tls::Wire;

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a session ended.
pub enum Ended {
    Stopped,
    Lost(StoreError),
}

/// Whether `stop` says the feed is stopping (its sender was dropped).
pub fn stopping(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// One connection that Redis pushes messages on.
pub struct Session {
    socket: Wire,
    reader: BufReader<Wire>,
    parser: redis::Parser,
    timeout: Duration,
}

impl Session {
    /// Connects and authenticates within `timeout`, which is also the read tick: a read
    /// that long without anything from Redis sends a `PING`.
    pub fn open(connector: &Connector, timeout: Duration) -> Result<Session, StoreError> {
        let (socket, reader) = connector.subscriber(timeout)?;
        Ok(Session {
            socket,
            reader,
            parser: redis::Parser::new(),
            timeout,
        })
    }

    /// Another handle of the socket: for the stopper to shut down, and for other threads to
    /// write commands on.
    pub fn socket(&self) -> io::Result<Wire> {
        self.socket.try_clone()
    }

    pub fn write(&self, command: &[u8]) -> io::Result<()> {
        (&self.socket).write_all(command)
    }

    /// The next thing Redis sends.
    pub fn read(&mut self) -> Result<Value, RedisError> {
        self.parser.parse_value(&mut self.reader)
    }

    /// Hands everything Redis sends to `handle` until the connection fails, `handle` says it
    /// is lost, or the stopper ends it. A quiet tick calls `ping` (to write a `PING`); a
    /// second one with the `PING` unanswered means the link is dead.
    pub fn pump(
        &mut self,
        stop: &Receiver<()>,
        mut ping: impl FnMut() -> io::Result<()>,
        mut handle: impl FnMut(Value) -> Result<(), StoreError>,
    ) -> Ended {
        let mut ping_sent = false;
        loop {
            match self.read() {
                Ok(value) => {
                    ping_sent = false;
                    if let Err(e) = handle(value) {
                        return Ended::Lost(e);
                    }
                }
                Err(_) if stopping(stop) => return Ended::Stopped,
                Err(e) if e.is_timeout() && !ping_sent => {
                    if let Err(e) = ping() {
                        return Ended::Lost(RedisError::from(e).into());
                    }
                    ping_sent = true;
                }
                Err(e) if e.is_timeout() => {
                    log::debug!("no answer to PING in {:?}", self.timeout);
                    return Ended::Lost(StoreError::TimedOut);
                }
                Err(e) => return Ended::Lost(e.into()),
            }
        }
    }
}

/// What a session tells the loop once it is subscribed.
pub struct Up<'a> {
    sessions: u64,
    backoff: Duration,
    metrics: &'a Metrics,
}

impl Up<'_> {
    /// The session is subscribed: the next loss waits the shortest backoff again, and every
    /// session after the first counts as a resubscription.
    pub fn subscribed(&mut self) {
        if self.sessions > 0 {
            Metrics::count(&self.metrics.redis_resubscribes_total);
        }
        self.sessions += 1;
        self.backoff = BACKOFF_MIN;
    }
}

/// Runs `session` until one ends stopped or `stop` ends a wait between them. `after` runs
/// after every session and says whether the feed had been up; `what` names the feed in the
/// logs, which say it is down once (a warning) and then, while it stays down, at debug.
pub fn reconnect(
    what: &str,
    stop: &Receiver<()>,
    metrics: &Metrics,
    mut session: impl FnMut(&mut Up) -> Ended,
    mut after: impl FnMut(&Ended) -> bool,
) {
    let mut up = Up {
        sessions: 0,
        backoff: BACKOFF_MIN,
        metrics,
    };
    let mut reported_down = false;
    loop {
        let ended = session(&mut up);
        let was_up = after(&ended);
        let Ended::Lost(error) = ended else { break };
        Metrics::count(&metrics.redis_errors_total);
        if was_up || !reported_down {
            log::warn!("{what} down: {error}; reconnecting");
            reported_down = true;
        } else {
            log::debug!("{what} still down: {error}");
        }
        let wait = jitter(up.backoff);
        up.backoff = (up.backoff * 2).min(BACKOFF_MAX);
        if !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
            break;
        }
    }
    log::debug!("{what} stopped");
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

    #[test]
    fn the_loop_backs_off_until_stopped_and_counts_resubscriptions() {
        let metrics = Metrics::default();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut sessions = 0;
        let mut stop = Some(stop);
        reconnect(
            "test feed",
            &stopped,
            &metrics,
            |up| {
                sessions += 1;
                up.subscribed();
                match sessions {
                    3 => {
                        drop(stop.take());
                        Ended::Stopped
                    }
                    _ => Ended::Lost(StoreError::TimedOut),
                }
            },
            |_| true,
        );
        assert_eq!(sessions, 3);
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count(&metrics.redis_resubscribes_total), 2);
        assert_eq!(count(&metrics.redis_errors_total), 2);
    }
}
