//! The Redis store: last pings in hashes, delivery by `PUBLISH`.
//!
//! Each user has a hash `<prefix>last:<user>` with `seq`, `time` and `status`, and a channel
//! `<prefix>ping:<user>` whose messages are `"<seq> <time> <status>"`. One Lua script bumps
//! the sequence number, stores the ping and publishes it, so a ping is stored and published
//! in one round trip or not at all. Pings go through the pipelining `redis-writer` threads
//! ([`super::writer`]); cached reads and health checks through a small bounded pool.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use redis::{Client, Connection, ConnectionLike, IntoConnectionInfo, RedisError, Script};

use std::sync::Arc;

use super::psubscribe::SubscriptionState;
use super::writer::Writers;
use super::{Store, StoreError};
use crate::metrics::Metrics;
use crate::ping::LastPing;

/// KEYS[1] the user's hash; ARGV: time (s), status, channel, now (us). Computes the sequence
/// number as [`next_seq`](super::next_seq) does; microseconds since 1970 fit exactly in a
/// Lua number (a double) until the year 2255.
pub const RECORD_SCRIPT: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local seq = math.max(stored and stored + 1 or 0, tonumber(ARGV[4]))
seq = string.format('%d', seq)
redis.call('HSET', KEYS[1], 'seq', seq, 'time', ARGV[1], 'status', ARGV[2])
redis.call('PUBLISH', ARGV[3], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return seq
";

/// Last pings in Redis, shared by every instance on the same Redis and prefix.
pub struct RedisStore {
    keys: Keys,
    pool: Pool,
    writers: Writers,
    timeout: Duration,
    subscription: SubscriptionState,
    metrics: Arc<Metrics>,
}

/// Names of keys and channels under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash holding the user's last ping.
    pub fn last(&self, user: &str) -> String {
        format!("{}last:{user}", self.prefix)
    }

    /// The channel the user's pings are published on.
    pub fn channel(&self, user: &str) -> String {
        format!("{}ping:{user}", self.prefix)
    }

    /// The `PSUBSCRIBE` pattern matching every user's channel, and no other.
    pub fn pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 6);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("ping:*");
        pattern
    }

    /// The user whose channel this is.
    pub fn user_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("ping:")
    }
}

/// Parses a published message, `"<seq> <time> <status>"`.
pub fn parse_message(payload: &str) -> Option<LastPing> {
    let mut parts = payload.splitn(3, ' ');
    Some(LastPing {
        seq: parts.next()?.parse().ok()?,
        time: parts.next()?.parse().ok()?,
        status: parts.next()?.to_owned(),
    })
}

impl RedisStore {
    /// A store on the Redis at `url` (already validated by the configuration). Connections
    /// are made on first use, so this succeeds while Redis is down.
    pub fn new(
        url: &str,
        prefix: &str,
        pool_size: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, RedisError> {
        let connector = Arc::new(Connector::new(url, timeout)?);
        let script = Script::new(RECORD_SCRIPT);
        let writers = Writers::start(
            Arc::clone(&connector),
            script.get_hash().to_owned(),
            RECORD_SCRIPT,
            Arc::clone(&metrics),
        )
        .map_err(RedisError::from)?;
        Ok(RedisStore {
            pool: Pool::new(connector, pool_size, timeout),
            keys: Keys::new(prefix),
            writers,
            timeout,
            subscription: SubscriptionState::default(),
            metrics,
        })
    }

    /// Whether the `redis-psubscribe` thread is subscribed; that thread sets it.
    pub fn subscription(&self) -> &SubscriptionState {
        &self.subscription
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs `f` on a pooled connection, counting failures.
    fn with<T>(
        &self,
        f: impl FnMut(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let result = self.pool.with(f);
        if result.is_err() {
            Metrics::count(&self.metrics.redis_errors_total);
        }
        result
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A new connection outside the pool, made within the Redis timeout, which is also its
    /// read and write timeout.
    pub fn connect(&self) -> Result<Connection, RedisError> {
        self.pool.connector.connect(self.timeout)
    }
}

type Row = (Option<u64>, Option<u64>, Option<String>);

fn row_to_ping((seq, time, status): Row) -> Option<LastPing> {
    Some(LastPing {
        seq: seq?,
        time: time.unwrap_or(0),
        status: status.unwrap_or_default(),
    })
}

impl Store for RedisStore {
    fn record(&self, user: &str, status: &str, now_micros: u64) -> Result<LastPing, StoreError> {
        let time = now_micros / 1_000_000;
        let seq = self.writers.record(
            self.keys.last(user),
            self.keys.channel(user),
            time,
            status,
            now_micros,
            self.timeout,
        )?;
        Ok(LastPing {
            seq,
            time,
            status: status.to_owned(),
        })
    }

    fn last_many(&self, users: &[String]) -> Result<Vec<(String, LastPing)>, StoreError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HMGET")
                .arg(self.keys.last(user))
                .arg(&["seq", "time", "status"]);
        }
        let rows: Vec<Row> = self.with(|con| pipe.query(con))?;
        Ok(users
            .iter()
            .zip(rows)
            .filter_map(|(user, row)| Some((user.clone(), row_to_ping(row)?)))
            .collect())
    }

    fn health(&self) -> Result<(), String> {
        if !self.subscription.is_up() {
            return Err("redis subscription down".into());
        }
        self.with(|con| redis::cmd("PING").query::<String>(con))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn subscription_up(&self) -> Option<bool> {
        Some(self.subscription.is_up())
    }
}

/// How to reach Redis within a time budget.
pub(super) struct Connector {
    client: Client,
    /// Replies the redis crate waits for while setting a connection up (`AUTH`, `SELECT`).
    setup_replies: u32,
    /// How far a reused connection's timeout may fall short of the time a call has left
    /// before it is set again: a sixteenth of the Redis timeout.
    slack: Duration,
}

/// A Redis connection and the read and write timeout set on it.
pub(super) struct Link {
    pub(super) con: Connection,
    timeout: Duration,
}

impl Connector {
    /// A connector for `url` whose calls get `timeout` each. The crate's `CLIENT SETINFO` is
    /// skipped: it costs a round trip per connection and Redis before 7.2 refuses it anyway.
    fn new(url: &str, timeout: Duration) -> Result<Connector, RedisError> {
        let info = url.into_connection_info()?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let setup_replies =
            u32::from(settings.password().is_some()) + u32::from(settings.db() != 0);
        Ok(Connector {
            client: Client::open(info.set_redis_settings(settings))?,
            setup_replies,
            slack: timeout / 16,
        })
    }

    /// Connects within `budget`, leaving the connection with `budget` as its read and write
    /// timeout. The crate applies its timeout to the TCP connect and again to each setup reply,
    /// so the budget is shared out among them.
    pub(super) fn connect(&self, budget: Duration) -> Result<Connection, RedisError> {
        let con = self
            .client
            .get_connection_with_timeout(budget / (self.setup_replies + 1))?;
        con.set_read_timeout(Some(budget))?;
        con.set_write_timeout(Some(budget))?;
        Ok(con)
    }

    /// `reused` if it is still open, else a new connection made in the time left before
    /// `deadline`; either way with read and write timeouts that expire by the deadline.
    ///
    /// A reused connection keeps the timeout it has unless that would outlast the deadline or
    /// expire more than `slack` before it. Setting it costs two system calls, which under load
    /// would be paid on every pipeline, while every pipeline's deadline is about the same
    /// distance away.
    pub(super) fn ready(
        &self,
        reused: Option<Link>,
        deadline: Instant,
    ) -> Result<Link, RedisError> {
        let left = left_until(deadline)?;
        match reused.filter(|link| link.con.is_open()) {
            Some(mut link) if link.timeout > left || link.timeout + self.slack < left => {
                let timeout = left.saturating_sub(self.slack / 2).max(MIN_TIMEOUT);
                link.con.set_read_timeout(Some(timeout))?;
                link.con.set_write_timeout(Some(timeout))?;
                link.timeout = timeout;
                Ok(link)
            }
            Some(link) => Ok(link),
            None => Ok(Link {
                con: self.connect(left)?,
                timeout: left,
            }),
        }
    }
}

/// The shortest timeout a call is given; less counts as no time left.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// At most `size` Redis connections, made on demand, reused most recent first, and dropped
/// when they fail.
///
/// Each call runs under one deadline, the Redis timeout: waiting for a free connection,
/// connecting and the command itself all come out of it, so a ping is answered within about
/// that time even when Redis is frozen.
struct Pool {
    connector: Arc<Connector>,
    timeout: Duration,
    idle: Mutex<Vec<Link>>,
    /// One token per connection that may exist; holding one is the right to use one.
    give_back: Sender<()>,
    take: Receiver<()>,
}

impl Pool {
    fn new(connector: Arc<Connector>, size: usize, timeout: Duration) -> Pool {
        let (give_back, take) = crossbeam_channel::bounded(size);
        for _ in 0..size {
            give_back.send(()).expect("the pool holds its receiver");
        }
        Pool {
            connector,
            timeout,
            idle: Mutex::new(Vec::with_capacity(size)),
            give_back,
            take,
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not reused.
    ///
    /// An idle connection whose server has gone (Redis restarted) fails at once; then every
    /// idle connection, being as stale, is dropped and `f` runs once more on a new one, so a
    /// restart costs clients nothing. A timeout is not retried.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.take
            .recv_timeout(self.timeout)
            .map_err(|_| StoreError::Busy)?;
        let _token = Token(&self.give_back);
        let pooled = self.idle.lock().pop().filter(|link| link.con.is_open());
        let reused = pooled.is_some();
        let mut link = self
            .connector
            .ready(pooled, deadline)
            .map_err(unavailable)?;
        let value = match f(&mut link.con) {
            Err(e) if reused && e.is_connection_dropped() => {
                log::debug!("a pooled Redis connection was dropped ({e}); reconnecting");
                self.idle.lock().clear();
                link = self.connector.ready(None, deadline).map_err(unavailable)?;
                f(&mut link.con).map_err(unavailable)?
            }
            other => other.map_err(unavailable)?,
        };
        self.idle.lock().push(link);
        Ok(value)
    }
}

/// Gives a pool token back when dropped, however the call ended.
struct Token<'a>(&'a Sender<()>);

impl Drop for Token<'_> {
    fn drop(&mut self) {
        // Cannot fail: the pool owns the receiver, and there is room for every token.
        let _ = self.0.try_send(());
    }
}

/// Time left before `deadline`, or a timeout error once it has passed.
fn left_until(deadline: Instant) -> Result<Duration, RedisError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| *left >= MIN_TIMEOUT)
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis did not answer in time").into()
        })
}

pub(super) fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string().replace(['\r', '\n'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys::new("hb:");
        assert_eq!(keys.last("u 1"), "hb:last:u 1");
        assert_eq!(keys.channel("u*"), "hb:ping:u*");
        assert_eq!(keys.pattern(), "hb:ping:*");
        assert_eq!(keys.user_of_channel("hb:ping:u*"), Some("u*"));
        assert_eq!(keys.user_of_channel("hb:last:u"), None);
        assert_eq!(keys.user_of_channel("other:ping:u"), None);
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped_in_the_pattern() {
        assert_eq!(
            Keys::new("a*[b]?\\:").pattern(),
            "a\\*\\[b\\]\\?\\\\:ping:*"
        );
    }

    #[test]
    fn messages_carry_seq_time_and_the_whole_status() {
        let ping = parse_message("7 1700000000 do not disturb").unwrap();
        assert_eq!(
            ping,
            LastPing {
                seq: 7,
                time: 1_700_000_000,
                status: "do not disturb".into()
            }
        );
        assert_eq!(parse_message("7 1 ").unwrap().status, "");
        assert_eq!(parse_message("7 1"), None);
        assert_eq!(parse_message("x 1 a"), None);
    }
}
