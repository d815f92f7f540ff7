//! What is read of each user in one pipeline, on one Redis or on each master of a cluster:
//! a [`UserRead`] adds the same commands for every user and parses each user's replies.

use std::time::Instant;

use redis::{FromRedisValue, ParsingError, Value};

use super::schema::{Keys, LastRow, parse_last};
use crate::metrics::{Metrics, RedisCall};
use crate::presence::Presence;
use crate::store::StoreError;

/// A read of each of a request's users: its commands, and what their replies say.
pub trait UserRead {
    type Out;
    /// Commands (and so replies) per user.
    const COMMANDS: usize;
    fn add(&self, keys: &Keys, pipe: &mut redis::Pipeline, user: &str);
    /// Reads `user`'s `COMMANDS` replies.
    fn parse(
        &self,
        user: &str,
        replies: &mut dyn Iterator<Item = Value>,
    ) -> Result<Self::Out, ParsingError>;
}

/// The user's presence, if any (`HMGET` of the user's hash).
pub struct Last {
    /// The device TTL, for presences stored before there were devices.
    pub ttl_micros: u64,
}

impl UserRead for Last {
    type Out = Option<Presence>;
    const COMMANDS: usize = 1;

    fn add(&self, keys: &Keys, pipe: &mut redis::Pipeline, user: &str) {
        keys.add_last_read(pipe, user);
    }

    fn parse(
        &self,
        _user: &str,
        replies: &mut dyn Iterator<Item = Value>,
    ) -> Result<Self::Out, ParsingError> {
        let row = LastRow::from_redis_value(next(replies)?)?;
        Ok(parse_last(row, self.ttl_micros))
    }
}

/// Whether the app lets `watcher` see the user: its set `<prefix>watchers:<user>` holds the
/// watcher or `*` (`SMISMEMBER`, Redis 6.2 or later), or the user is the watcher. The set is
/// asked about either way, so that every user costs the same.
pub struct Allowed<'a> {
    pub watcher: &'a str,
}

impl UserRead for Allowed<'_> {
    type Out = bool;
    const COMMANDS: usize = 1;

    fn add(&self, keys: &Keys, pipe: &mut redis::Pipeline, user: &str) {
        pipe.cmd("SMISMEMBER")
            .arg(keys.watchers(user))
            .arg(self.watcher)
            .arg("*");
    }

    fn parse(
        &self,
        user: &str,
        replies: &mut dyn Iterator<Item = Value>,
    ) -> Result<bool, ParsingError> {
        let [watcher, everyone] = <[bool; 2]>::from_redis_value(next(replies)?)?;
        Ok(watcher || everyone || user == self.watcher)
    }
}

/// [`Allowed`] of many users on one Redis as one script call, keys declared, its reply a `1`
/// or `0` per user: a stream's check is one command and one reply rather than one per user.
/// Measured on 10,000 streams of 100 users: heartbeat spent 2.7 us a user on the pipeline of
/// `SMISMEMBER`s, building the commands and parsing their replies, and the script costs it
/// under 1 us; Redis spends about 1.2 us a user either way. On a cluster a script's keys must
/// share a slot, so there the check stays a pipeline per master.
pub const ALLOWED_SCRIPT: &str = "local watcher, seen = ARGV[1], {}
for i, key in ipairs(KEYS) do
  local ok = redis.call('SISMEMBER', key, watcher) == 1 or redis.call('SISMEMBER', key, '*') == 1
  seen[i] = ok and '1' or '0'
end
return table.concat(seen)";

/// Reads the reply of [`ALLOWED_SCRIPT`] for `users`, the watcher always allowed themself.
pub fn parse_allowed(
    users: &[String],
    watcher: &str,
    reply: &str,
) -> Result<Vec<bool>, ParsingError> {
    if reply.len() != users.len() {
        return Err(ParsingError::from(format!(
            "{} answers for {} users",
            reply.len(),
            users.len()
        )));
    }
    let answers = users.iter().zip(reply.bytes());
    Ok(answers
        .map(|(user, a)| a == b'1' || user == watcher)
        .collect())
}

/// The user's presence if the watcher may see it: both read for every user, allowed or not,
/// so that a hidden user costs what an allowed one does.
pub struct AllowedLast<'a>(pub Allowed<'a>, pub Last);

impl UserRead for AllowedLast<'_> {
    type Out = Option<Presence>;
    const COMMANDS: usize = 2;

    fn add(&self, keys: &Keys, pipe: &mut redis::Pipeline, user: &str) {
        self.0.add(keys, pipe, user);
        self.1.add(keys, pipe, user);
    }

    fn parse(
        &self,
        user: &str,
        replies: &mut dyn Iterator<Item = Value>,
    ) -> Result<Self::Out, ParsingError> {
        let allowed = self.0.parse(user, replies)?;
        let presence = self.1.parse(user, replies)?;
        Ok(presence.filter(|_| allowed))
    }
}

fn next(replies: &mut dyn Iterator<Item = Value>) -> Result<Value, ParsingError> {
    replies
        .next()
        .ok_or_else(|| ParsingError::from("fewer replies than commands"))
}

/// Reads `replies`, `R::COMMANDS` a user, for `users` in order.
pub fn parse_all<R: UserRead>(
    read: &R,
    users: &[impl AsRef<str>],
    replies: Vec<Value>,
) -> Result<Vec<R::Out>, ParsingError> {
    if replies.len() != users.len() * R::COMMANDS {
        return Err(ParsingError::from(format!(
            "{} replies to {} commands",
            replies.len(),
            users.len() * R::COMMANDS
        )));
    }
    let mut replies = replies.into_iter();
    let mut parse = |user: &_| read.parse(user, &mut replies);
    users.iter().map(|u| parse(u.as_ref())).collect()
}

/// Reads a [`UserRead`] of each of a request's users: on one Redis, or on each master of a
/// cluster.
pub trait Reader {
    /// Each of `users`' `R::Out`, in order.
    fn read<R: UserRead>(&self, users: &[String], read: &R) -> Result<Vec<R::Out>, StoreError>;
}

/// [`Store::last_many`](crate::store::Store::last_many) by `reader`: the users that have a
/// presence (that the watcher may see, with one), with it; timed as a cached read.
pub fn last_many(
    reader: &impl Reader,
    users: &[String],
    watcher: Option<&str>,
    ttl_micros: u64,
    metrics: &Metrics,
) -> Result<Vec<(String, Presence)>, StoreError> {
    let began = Instant::now();
    let last = Last { ttl_micros };
    let presences = match watcher {
        None => reader.read(users, &last),
        Some(watcher) => reader.read(users, &AllowedLast(Allowed { watcher }, last)),
    };
    (metrics.redis_call(RedisCall::CachedRead)).observe(began.elapsed());
    let found = users.iter().zip(presences?);
    Ok(found
        .filter_map(|(user, p)| Some((user.clone(), p?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(values: &[i64]) -> Value {
        Value::Array(values.iter().map(|&v| Value::Int(v)).collect())
    }

    #[test]
    fn a_watcher_is_allowed_by_its_id_or_by_a_star_and_always_to_see_themself() {
        let read = Allowed { watcher: "w" };
        let replies = vec![ints(&[1, 0]), ints(&[0, 1]), ints(&[0, 0]), ints(&[1, 1])];
        assert_eq!(
            parse_all(&read, &["a", "b", "c", "d"], replies).unwrap(),
            [true, true, false, true]
        );
        let themself = parse_all(&read, &["w"], vec![ints(&[0, 0])]).unwrap();
        assert_eq!(themself, [true], "a user may always see themself");
        assert!(parse_all(&read, &["a", "b"], vec![ints(&[1, 0])]).is_err());
    }

    #[test]
    fn the_scripts_answers_are_read_in_order_with_the_watcher_always_allowed() {
        let users: Vec<String> = ["a", "w", "b"].map(String::from).into();
        assert_eq!(
            parse_allowed(&users, "w", "100").unwrap(),
            [true, true, false]
        );
        assert!(parse_allowed(&users, "w", "10").is_err());
    }

    #[test]
    fn a_hidden_users_presence_is_read_and_dropped() {
        let packed = |p: &str| {
            let mut row = vec![Value::BulkString(p.as_bytes().to_vec())];
            row.extend([Value::Nil, Value::Nil, Value::Nil, Value::Nil]);
            Value::Array(row)
        };
        let read = AllowedLast(Allowed { watcher: "w" }, Last { ttl_micros: 1 });
        let replies = vec![
            ints(&[0, 0]),
            packed("5 5 99 1"),
            ints(&[1, 0]),
            packed("6 6 99 0"),
        ];
        let got = parse_all(&read, &["a", "b"], replies).unwrap();
        assert!(got[0].is_none());
        assert_eq!(got[1].as_ref().unwrap().ping.seq, 6);
    }
}
