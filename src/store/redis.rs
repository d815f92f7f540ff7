//! The Redis store: last pings in hashes, delivery by `PUBLISH`, through a small bounded pool.
//!
//! Each user has a hash `<prefix>last:<user>` with `seq`, `time` and `status`, and a channel
//! `<prefix>ping:<user>` whose messages are `"<seq> <time> <status>"`. One Lua script bumps
//! the sequence number, stores the ping and publishes it, so a ping is stored and published
//! in one round trip or not at all.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redis::{Client, Connection, ConnectionLike, RedisError, Script};

use super::{Store, StoreError};
use crate::ping::LastPing;

/// KEYS[1] the user's hash; ARGV: time (s), status, channel, now (us). Computes the sequence
/// number as [`next_seq`](super::next_seq) does; microseconds since 1970 fit exactly in a
/// Lua number (a double) until the year 2255.
const RECORD_SCRIPT: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local seq = math.max(stored and stored + 1 or 0, tonumber(ARGV[4]))
seq = string.format('%d', seq)
redis.call('HSET', KEYS[1], 'seq', seq, 'time', ARGV[1], 'status', ARGV[2])
redis.call('PUBLISH', ARGV[3], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return seq
";

/// Last pings in Redis, shared by every instance on the same Redis and prefix.
pub struct RedisStore {
    client: Client,
    keys: Keys,
    pool: Pool,
    record: Script,
    timeout: Duration,
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
    ) -> Result<RedisStore, RedisError> {
        let client = Client::open(url)?;
        Ok(RedisStore {
            pool: Pool::new(client.clone(), pool_size, timeout),
            client,
            keys: Keys::new(prefix),
            record: Script::new(RECORD_SCRIPT),
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A new connection with this store's timeouts, outside the pool.
    pub fn connect(&self) -> Result<Connection, RedisError> {
        connect(&self.client, self.timeout)
    }

    /// The last pings of `users` that have one, in one round trip.
    pub fn last_many(&self, users: &[String]) -> Result<Vec<(String, LastPing)>, StoreError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HMGET")
                .arg(self.keys.last(user))
                .arg(&["seq", "time", "status"]);
        }
        let rows: Vec<Row> = self.pool.with(|con| pipe.query(con))?;
        Ok(users
            .iter()
            .zip(rows)
            .filter_map(|(user, row)| Some((user.clone(), row_to_ping(row)?)))
            .collect())
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
        let mut invocation = self.record.key(self.keys.last(user));
        invocation
            .arg(time)
            .arg(status)
            .arg(self.keys.channel(user))
            .arg(now_micros);
        let seq: u64 = self.pool.with(|con| invocation.invoke(con))?;
        Ok(LastPing {
            seq,
            time,
            status: status.to_owned(),
        })
    }

    fn last(&self, user: &str) -> Result<Option<LastPing>, StoreError> {
        let row: Row = self.pool.with(|con| {
            redis::cmd("HMGET")
                .arg(self.keys.last(user))
                .arg(&["seq", "time", "status"])
                .query(con)
        })?;
        Ok(row_to_ping(row))
    }
}

fn connect(client: &Client, timeout: Duration) -> Result<Connection, RedisError> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// At most `size` Redis connections, made on demand and dropped when they fail.
///
/// The channel holds one slot per allowed connection: `Some` an idle connection, `None` the
/// right to open one. Taking a slot waits at most the Redis timeout, so a ping never queues
/// longer than that behind other pings.
struct Pool {
    client: Client,
    timeout: Duration,
    give_back: Sender<Option<Connection>>,
    take: Receiver<Option<Connection>>,
}

impl Pool {
    fn new(client: Client, size: usize, timeout: Duration) -> Pool {
        let (give_back, take) = crossbeam_channel::bounded(size);
        for _ in 0..size {
            give_back.send(None).expect("the pool holds its receiver");
        }
        Pool {
            client,
            timeout,
            give_back,
            take,
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not reused.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let slot = self
            .take
            .recv_timeout(self.timeout)
            .map_err(|_| StoreError::Busy)?;
        // Whatever happens below, the slot goes back; only a healthy connection goes with it.
        let mut slot = Slot {
            pool: self,
            con: slot.filter(|con| con.is_open()),
        };
        let mut con = match slot.con.take() {
            Some(con) => con,
            None => connect(&self.client, self.timeout).map_err(unavailable)?,
        };
        let result = f(&mut con).map_err(unavailable)?;
        slot.con = Some(con);
        Ok(result)
    }
}

struct Slot<'a> {
    pool: &'a Pool,
    con: Option<Connection>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Cannot fail: the pool owns the receiver, and there is room for every slot.
        let _ = self.pool.give_back.try_send(self.con.take());
    }
}

fn unavailable(error: RedisError) -> StoreError {
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
