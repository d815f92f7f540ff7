//! What heartbeat writes in Redis, in one place: key and channel names under the prefix, the
//! message format on the channels, and the script that stores and publishes a ping, with its
//! arguments.
//!
//! Each user has a hash `<prefix>last:<user>` with `seq`, `time` and `status`, and a channel
//! `<prefix>ping:<user>` whose messages are `"<seq> <time> <status>"`. On a Redis Cluster the
//! user in both names is a hash tag, `{u:<user>}`, so the hash and the shard channel are in
//! the same slot (the `u:` keeps the tag from being empty, and thus ignored, for an id that
//! begins with `}`).

use crate::ping::LastPing;

/// KEYS[1] the user's hash; ARGV: time (s), status, channel, now (us), and the publishing
/// command (`PUBLISH`, or `SPUBLISH` on a cluster). Computes the sequence number as
/// [`next_seq`](crate::store::next_seq) does; microseconds since 1970 fit exactly in a Lua
/// number (a double) until the year 2255. The argument order is [`Record::add_to`]'s.
pub const RECORD_SCRIPT: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local seq = math.max(stored and stored + 1 or 0, tonumber(ARGV[4]))
seq = string.format('%d', seq)
redis.call('HSET', KEYS[1], 'seq', seq, 'time', ARGV[1], 'status', ARGV[2])
redis.call(ARGV[5], ARGV[3], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return seq
";

/// Names of keys and channels under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Whether names carry the user as a hash tag, and pings go out by `SPUBLISH`.
    cluster: bool,
}

impl Keys {
    /// Names for a single Redis.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            cluster: false,
        }
    }

    /// Names for a Redis Cluster. The prefix holds no `{` or `}` (the configuration refuses
    /// them), so the user's tag is the first in every name.
    pub fn cluster(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            cluster: true,
        }
    }

    /// The hash holding the user's last ping.
    pub fn last(&self, user: &str) -> String {
        self.name("last:", user)
    }

    /// The channel the user's pings are published on.
    pub fn channel(&self, user: &str) -> String {
        self.name("ping:", user)
    }

    fn name(&self, kind: &str, user: &str) -> String {
        match self.cluster {
            true => format!("{}{kind}{{u:{user}}}", self.prefix),
            false => format!("{}{kind}{user}", self.prefix),
        }
    }

    /// The command that publishes on a [`channel`](Self::channel).
    pub fn publish_command(&self) -> &'static str {
        match self.cluster {
            true => "SPUBLISH",
            false => "PUBLISH",
        }
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
        let user = channel.strip_prefix(&self.prefix)?.strip_prefix("ping:")?;
        match self.cluster {
            true => user.strip_prefix("{u:")?.strip_suffix('}'),
            false => Some(user),
        }
    }

    /// Adds the read of `user`'s last ping to `pipe`; [`parse_last`] reads its reply.
    pub fn add_last_read(&self, pipe: &mut redis::Pipeline, user: &str) {
        pipe.cmd("HMGET")
            .arg(self.last(user))
            .arg(&["seq", "time", "status"]);
    }
}

/// The reply to one [`Keys::add_last_read`]: `seq`, `time`, `status`.
pub type LastRow = (Option<u64>, Option<u64>, Option<String>);

/// The last ping in a [`LastRow`], if the user has one.
pub fn parse_last((seq, time, status): LastRow) -> Option<LastPing> {
    Some(LastPing {
        seq: seq?,
        time: time.unwrap_or(0),
        status: status.unwrap_or_default(),
    })
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

/// One call of [`RECORD_SCRIPT`]: a user's ping to store and publish.
#[derive(Debug)]
pub struct Record {
    key: String,
    channel: String,
    publish: &'static str,
    /// UTC epoch seconds.
    pub time: u64,
    status: String,
    now_micros: u64,
}

impl Record {
    pub fn new(keys: &Keys, user: &str, status: &str, now_micros: u64) -> Record {
        Record {
            key: keys.last(user),
            channel: keys.channel(user),
            publish: keys.publish_command(),
            time: now_micros / 1_000_000,
            status: status.to_owned(),
            now_micros,
        }
    }

    /// Adds the script call to `pipe`, by the script's SHA1 `sha`; its reply is the sequence
    /// number.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, sha: &str) {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(1)
            .arg(&self.key)
            .arg(self.time)
            .arg(&self.status)
            .arg(&self.channel)
            .arg(self.now_micros)
            .arg(self.publish);
    }

    /// The user's hash, which decides the node a cluster runs the call on.
    pub fn key(&self) -> &str {
        &self.key
    }
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

    #[test]
    fn a_record_call_passes_the_arguments_in_the_scripts_order() {
        let record = Record::new(&Keys::new("hb:"), "u", "busy", 1_700_000_000_123_456);
        let mut pipe = redis::pipe();
        record.add_to(&mut pipe, "sha");
        let packed = String::from_utf8(pipe.get_packed_pipeline()).unwrap();
        let args: Vec<&str> = packed
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
            .collect();
        assert_eq!(
            args,
            [
                "EVALSHA",
                "sha",
                "1",
                "hb:last:u",
                "1700000000",
                "busy",
                "hb:ping:u",
                "1700000000123456",
                "PUBLISH"
            ]
        );
    }

    #[test]
    fn on_a_cluster_the_hash_and_channel_share_the_users_slot() {
        use super::super::slot::slot;
        let keys = Keys::cluster("hb:");
        assert_eq!(keys.last("alice"), "hb:last:{u:alice}");
        assert_eq!(keys.channel("alice"), "hb:ping:{u:alice}");
        assert_eq!(keys.publish_command(), "SPUBLISH");
        for user in ["alice", "}", "}x", "a}b", "{", "{x}", "u 1", "\u{e9}"] {
            let (last, channel) = (keys.last(user), keys.channel(user));
            assert_eq!(slot(last.as_bytes()), slot(channel.as_bytes()), "{user:?}");
            assert_eq!(keys.user_of_channel(&channel), Some(user));
        }
        assert_ne!(
            slot(keys.last("alice").as_bytes()),
            slot(keys.last("bob").as_bytes())
        );
        assert_eq!(keys.user_of_channel("hb:ping:alice"), None);
    }
}
