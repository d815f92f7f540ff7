//! The least a heartbeat instance needs of Redis, as an ACL rule (`heartbeat acl-rule`): the
//! commands it sends, the ones its scripts call, and its keys and channels under
//! `KEY_PREFIX`. The test suite runs every Redis mode as a user holding just this rule.

use super::schema::Keys;
use crate::config::{Config, StoreConfig};

/// Commands of every mode: health and keepalive, the record script (and what it calls), the
/// cached reads and `/status`'s contacts checks, `REDIS_WAIT_REPLICAS`.
const COMMON: &[&str] = &[
    "ping",
    "evalsha",
    "script|load",
    "hgetall",
    "hset",
    "hdel",
    "hmget",
    "smismember",
    "wait",
];

/// One Redis: the pattern subscription, and a stream's contacts script.
const SINGLE: &[&str] = &["psubscribe", "publish", "eval", "sismember"];

/// Under Sentinel: one Redis's, and `ROLE`, which tells a master from a demoted one.
const SENTINEL: &[&str] = &["psubscribe", "publish", "eval", "sismember", "role"];

/// A cluster: its slot map, sharded pub/sub, redirections.
const CLUSTER: &[&str] = &[
    "cluster|slots",
    "asking",
    "ssubscribe",
    "sunsubscribe",
    "spublish",
];

/// The rule's parts for `store` and `prefix`, as `ACL SETUSER` takes them after the user's
/// name and password: `None` for memory mode, which uses no Redis.
pub fn rule(store: &StoreConfig, prefix: &str) -> Option<Vec<String>> {
    let (keys, commands, db) = match store {
        StoreConfig::Memory => return None,
        StoreConfig::Redis(url) => (Keys::new(prefix), SINGLE, database(url)),
        StoreConfig::Cluster(_) => (Keys::cluster(prefix), CLUSTER, 0),
        StoreConfig::Sentinel(_) => (Keys::new(prefix), SENTINEL, 0),
    };
    let channels = keys.pattern();
    let base = channels
        .strip_suffix("ping:*")
        .expect("the channel pattern ends in ping:*");
    let mut rule: Vec<String> = ["resetkeys", "resetchannels", "-@all"]
        .map(String::from)
        .to_vec();
    rule.extend(COMMON.iter().chain(commands).map(|c| format!("+{c}")));
    if db != 0 {
        rule.push("+select".into());
    }
    // The presences, and the contacts sets, which the app keeps. The sets are only read, but
    // not `%R~`: Redis counts a script's declared keys as written, and no command the rule
    // grants writes a set.
    rule.push(format!("~{base}last:*"));
    rule.push(format!("~{base}watchers:*"));
    // Literally the PSUBSCRIBE pattern: Redis compares a pattern subscription's pattern with
    // the allowed ones as text.
    rule.push(format!("&{channels}"));
    Some(rule)
}

/// The database a `redis://` URL selects.
fn database(url: &str) -> i64 {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map_or(0, |info| info.redis_settings().db())
}

/// What `heartbeat acl-rule` prints for the configuration in the environment.
pub fn print() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let rule = rule(&config.store, &config.key_prefix)
        .ok_or("REDIS=memory uses no Redis: there is no ACL to give")?;
    println!(
        "# The least heartbeat needs, for REDIS={} and KEY_PREFIX={} (Redis 7 or later):",
        config.store, config.key_prefix
    );
    println!("ACL SETUSER heartbeat on >PASSWORD {}", rule.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(value: &str) -> StoreConfig {
        let vars = [("REDIS", value)];
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
        .store
    }

    /// README's rules, as it shows them, for the default prefix.
    fn readme_rule(mode: &str) -> String {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let marker = format!("# {mode}\nACL SETUSER heartbeat on >PASSWORD ");
        let start = readme
            .find(&marker)
            .unwrap_or_else(|| panic!("README shows {marker:?}"));
        let line = &readme[start + marker.len()..];
        line[..line.find('\n').unwrap()].to_owned()
    }

    #[test]
    fn the_rules_readme_shows_are_the_ones_printed() {
        let single = rule(&store(":6379"), "heartbeat:").unwrap().join(" ");
        assert_eq!(readme_rule("one Redis"), single);
        let cluster = rule(&store("cluster://:7000"), "heartbeat:")
            .unwrap()
            .join(" ");
        assert_eq!(readme_rule("a cluster"), cluster);
        let sentinel = rule(&store("sentinel://:26379/mymaster"), "heartbeat:").unwrap();
        let heading = "under Sentinel (on the master and every replica)";
        assert_eq!(readme_rule(heading), sentinel.join(" "));
    }

    #[test]
    fn the_rule_follows_the_mode_the_prefix_and_the_database() {
        let single = rule(&store(":6379"), "hb*:").unwrap();
        assert!(single.contains(&"+psubscribe".to_owned()));
        assert!(!single.contains(&"+ssubscribe".to_owned()));
        assert!(single.contains(&"&hb\\*:ping:*".to_owned()), "{single:?}");
        assert!(single.contains(&"~hb\\*:last:*".to_owned()), "{single:?}");
        assert!(!single.contains(&"+select".to_owned()));
        let cluster = rule(&store("cluster://:7000"), "hb:").unwrap();
        assert!(cluster.contains(&"+ssubscribe".to_owned()));
        assert!(!cluster.contains(&"+psubscribe".to_owned()));
        let db = rule(&store("redis://h:1/3"), "hb:").unwrap();
        assert!(db.contains(&"+select".to_owned()));
        let sentinel = rule(&store("sentinel://:26379/m"), "hb:").unwrap();
        assert!(
            sentinel.contains(&"+role".to_owned()) && sentinel.contains(&"+psubscribe".to_owned())
        );
        assert_eq!(rule(&StoreConfig::Memory, "hb:"), None);
    }
}
