//! What heartbeat writes in Redis, in one place: key and channel names under the prefix, the
//! message format on the channels, and the arguments of the record script ([`script`]).
//!
//! Each user has a hash `<prefix>last:<user>` with the presence in one field `p`,
//! `"<seq> <time> <expires> <status>"` (the last visible ping, and when it expires, in
//! microseconds), while the user is offline by a leave or by going invisible the offline
//! event's id (`off`), and each device as a field `d:<device>` holding `"<at> <status>"` (at in
//! microseconds); a hash from before presence has `seq`, `time` and `status` instead, read as
//! live for the device TTL after `time` and rewritten by the next ping. And a channel
//! `<prefix>ping:<user>` whose messages are `"p <seq> <time> <expires> <status>"` (a visible
//! presence) or `"o <id> <time>"` (offline). On a Redis Cluster the user in every name is a
//! hash tag, `{u:<user>}`, so the hash and the shard channel are in the same slot (the `u:`
//! keeps the tag from being empty, and thus ignored, for an id that begins with `}`).
//!
//! [`script`]: super::script

use crate::ping::LastPing;
use crate::presence::{Presence, State, Update};

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

    /// The hash holding the user's presence (the last visible ping, and how it ends) and
    /// devices.
    pub fn last(&self, user: &str) -> String {
        self.name("last:", user)
    }

    /// The set, kept by the app, of the watchers allowed to see the user (`*`: everyone).
    pub fn watchers(&self, user: &str) -> String {
        self.name("watchers:", user)
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

    /// Adds the read of `user`'s presence to `pipe`; [`parse_last`] reads its reply.
    pub fn add_last_read(&self, pipe: &mut redis::Pipeline, user: &str) {
        pipe.cmd("HMGET")
            .arg(self.last(user))
            .arg(&["p", "off", "seq", "time", "status"]);
    }
}

/// The reply to one [`Keys::add_last_read`]: `p`, `off`, and a hash's from before presence,
/// `seq`, `time`, `status`.
pub type LastRow = (
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
);

/// The presence in a [`LastRow`], if the user has one. A hash written before presence has no
/// expiry: its ping is live for `ttl_micros`, as a device's.
pub fn parse_last(row: LastRow, ttl_micros: u64) -> Option<Presence> {
    let (packed, off, seq, time, status) = row;
    let (ping, expires) = match packed {
        Some(packed) => {
            let mut parts = packed.splitn(4, ' ');
            let seq = parts.next()?.parse().ok()?;
            let time = parts.next()?.parse().ok()?;
            let expires = parts.next()?.parse().ok()?;
            let status = parts.next()?.to_owned();
            (LastPing { seq, time, status }, expires)
        }
        None => {
            let time = time.unwrap_or(0);
            let status = status.unwrap_or_default();
            let ping = LastPing {
                seq: seq?,
                time,
                status,
            };
            (ping, time * 1_000_000 + ttl_micros)
        }
    };
    let state = match off {
        Some(id) => State::Offline(id),
        None => State::Until(expires),
    };
    Some(Presence { ping, state })
}

/// Parses a published message: `"p <seq> <time> <expires> <status>"` or `"o <id> <time>"`.
pub fn parse_message(payload: &str) -> Option<Update> {
    let (kind, rest) = payload.split_once(' ')?;
    match kind {
        "p" => {
            let mut parts = rest.splitn(4, ' ');
            let seq = parts.next()?.parse().ok()?;
            let time = parts.next()?.parse().ok()?;
            let expires = parts.next()?.parse().ok()?;
            let status = parts.next()?.to_owned();
            let ping = LastPing { seq, time, status };
            Some(Update::Online { ping, expires })
        }
        "o" => {
            let (id, time) = rest.split_once(' ')?;
            Some(Update::Offline {
                id: id.parse().ok()?,
                time: time.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// One call of the record script: a device's ping (or its leave) to store and publish.
#[derive(Debug)]
pub struct Record {
    last: String,
    channel: String,
    publish: &'static str,
    device: String,
    /// `None` for a leave.
    status: Option<String>,
    now_micros: u64,
    /// When the presence expires if this device is the newest: now plus the device TTL.
    expires_micros: u64,
}

impl Record {
    pub fn new(
        keys: &Keys,
        user: &str,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
        ttl_micros: u64,
    ) -> Record {
        Record {
            last: keys.last(user),
            channel: keys.channel(user),
            publish: keys.publish_command(),
            device: device.to_owned(),
            status: status.map(str::to_owned),
            now_micros,
            expires_micros: now_micros + ttl_micros,
        }
    }

    /// Adds the script call to `pipe`, by the script's SHA1 `sha`; its reply is the id of
    /// what it published, or nil.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, sha: &str) {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(1)
            .arg(&self.last)
            .arg(self.now_micros)
            .arg(format!("d:{}", self.device))
            .arg(self.status.as_deref().unwrap_or(""))
            .arg(&self.channel)
            .arg(self.publish)
            .arg(if self.status.is_some() { "0" } else { "1" })
            .arg(self.now_micros / 1_000_000)
            .arg(self.expires_micros);
    }

    /// The user's hash, which decides the node a cluster runs the call on.
    pub fn key(&self) -> &str {
        &self.last
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
    fn messages_carry_presence_or_offline_with_the_whole_status() {
        let online = parse_message("p 7 1700000000 1700000060000000 do not disturb").unwrap();
        let ping = LastPing {
            seq: 7,
            time: 1_700_000_000,
            status: "do not disturb".into(),
        };
        assert_eq!(
            online,
            Update::Online {
                ping,
                expires: 1_700_000_060_000_000
            }
        );
        assert!(
            matches!(parse_message("p 7 1 2 "), Some(Update::Online { ping, .. }) if ping.status.is_empty())
        );
        assert_eq!(
            parse_message("o 9 1700000000"),
            Some(Update::Offline {
                id: 9,
                time: 1_700_000_000
            })
        );
        for bad in ["p 7 1 2", "7 1 a", "o 9", "o x 1", "x 1 2 3 a", ""] {
            assert_eq!(parse_message(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_stored_presence_is_online_until_it_expires_or_offline_by_its_event() {
        let row = |expires: Option<u64>, off| match expires {
            Some(e) => (Some(format!("5 100 {e} 1")), off, None, None, None),
            None => (None, off, Some(5), Some(100), Some("1".to_owned())),
        };
        let ping = LastPing {
            seq: 5,
            time: 100,
            status: "1".into(),
        };
        assert_eq!(
            parse_last(row(Some(160_000_000), None), 60_000_000),
            Some(Presence {
                ping: ping.clone(),
                state: State::Until(160_000_000)
            })
        );
        assert_eq!(
            parse_last(row(Some(160_000_000), Some(9)), 60_000_000)
                .unwrap()
                .state,
            State::Offline(9)
        );
        // Written before presence: live for the device TTL after its ping.
        assert_eq!(
            parse_last(row(None, None), 30_000_000).unwrap().state,
            State::Until(130_000_000)
        );
        assert_eq!(parse_last((None, None, None, None, None), 1), None);
        assert_eq!(
            parse_last((Some("5 x".into()), None, None, None, None), 1),
            None
        );
    }

    #[test]
    fn a_record_call_passes_the_arguments_in_the_scripts_order() {
        let record = Record::new(
            &Keys::new("hb:"),
            "u",
            "phone",
            Some("busy"),
            1_700_000_000_123_456,
            60_000_000,
        );
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
                "1700000000123456",
                "d:phone",
                "busy",
                "hb:ping:u",
                "PUBLISH",
                "0",
                "1700000000",
                "1700000060123456"
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
