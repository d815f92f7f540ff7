//! Configuration from environment variables, optionally from a `.env` file.
//!
//! A real environment variable wins over `.env`; a missing `.env` is fine; a malformed one,
//! and every bad value, is a start-up error naming the variable, the value and what is expected.

mod access;
mod address;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

use crate::presence::Rules;

pub use self::access::{Cors, TrustedProxies, WatchPolicy};
use self::access::{parse_cors, parse_trusted, read_watching};
pub use self::address::{ClusterSeeds, Listen, SentinelConfig, StoreConfig, host_port, node_url};
use self::address::{LISTEN_EXPECTED, parse_listen, read_store};
pub use self::tls::RedisTls;
use self::tls::read_tls;

/// Everything the service reads from its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where to listen, as `host:port`; an empty host means all interfaces.
    pub listen: Listen,
    pub store: StoreConfig,
    /// The certificates of TLS to Redis, when the store is reached by TLS.
    pub redis_tls: RedisTls,
    /// Prefix of every Redis key and channel, so heartbeat can share a Redis.
    pub key_prefix: String,
    /// Silence after which a stream gets a `:` comment line.
    pub keepalive: Duration,
    /// How long a stream lasts before the server ends it (the client reconnects); `None`:
    /// for ever.
    pub max_stream: Option<Duration>,
    pub log_level: LevelFilter,
    pub limits: Limits,
    /// Connect, read and write timeout of every Redis connection.
    pub redis_timeout: Duration,
    /// Most Redis connections the ping path holds at once.
    pub redis_pool_size: usize,
    /// Replicas that must have a ping before it is answered as stored (0: none).
    pub redis_wait_replicas: u32,
    /// How long a write to a client may take before the client is dropped.
    pub write_timeout: Duration,
    /// Each stream socket's kernel send buffer.
    pub stream_send_buffer: usize,
    /// How long a request head (and its body) may take to arrive once it has begun.
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Events buffered per subscriber; a subscriber this far behind is disconnected.
    pub subscriber_queue: usize,
    /// How devices' pings make a user's presence.
    pub presence: Rules,
    /// Most connections served at once; `None` computes it from the process limits.
    pub max_connections: Option<usize>,
    /// Which browser origins may call the API.
    pub cors: Cors,
    /// Which peers may send `X-User-Claim`.
    pub trusted_proxies: TrustedProxies,
    /// Who may watch whom.
    pub watch_policy: WatchPolicy,
    /// Pings one device may send a minute before getting `429`; `None`: no limit.
    pub max_pings_per_minute: Option<u32>,
    /// Streams one watcher may hold at once (`claimed` and `contacts` only).
    pub max_streams_per_watcher: usize,
}

/// Size limits on what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_id_bytes: usize,
    pub max_status_bytes: usize,
    pub max_body_bytes: usize,
    pub max_head_bytes: usize,
    /// Most distinct users one `/subscribe?user=...` stream or `/status` request may name.
    pub max_users_per_stream: usize,
}

impl Default for Limits {
    /// The limits of [`DEFAULTS`].
    fn default() -> Self {
        Config::from_lookup(|_| None)
            .expect("the defaults are valid")
            .limits
    }
}

/// Every variable and its default, as the service applies it when the variable is unset: the
/// one place defaults are written. Tests check the shipped `.env` and README's table against
/// it.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("LISTEN", ":8080"),
    ("REDIS", ":6379"),
    ("REDIS_CA_FILE", ""),
    ("REDIS_CLIENT_CERT_FILE", ""),
    ("REDIS_CLIENT_KEY_FILE", ""),
    ("SENTINEL_USERNAME", ""),
    ("SENTINEL_PASSWORD", ""),
    ("KEY_PREFIX", "heartbeat:"),
    ("KEEPALIVE_SECS", "25"),
    ("MAX_STREAM_SECS", ""),
    ("LOG_LEVEL", "info"),
    ("MAX_ID_BYTES", "256"),
    ("MAX_STATUS_BYTES", "1024"),
    ("MAX_BODY_BYTES", "4096"),
    ("MAX_HEAD_BYTES", "16384"),
    ("MAX_USERS_PER_STREAM", "256"),
    ("REDIS_TIMEOUT_MS", "1000"),
    ("REDIS_POOL_SIZE", "16"),
    ("REDIS_WAIT_REPLICAS", "0"),
    ("WRITE_TIMEOUT_SECS", "10"),
    ("STREAM_SEND_BUFFER_BYTES", "65536"),
    ("REQUEST_TIMEOUT_SECS", "10"),
    ("IDLE_TIMEOUT_SECS", "120"),
    ("SUBSCRIBER_QUEUE", "1024"),
    ("DEVICE_TTL_SECS", "60"),
    ("MAX_DEVICES_PER_USER", "16"),
    ("STATUS_PRIORITY", "2,0,1"),
    ("INVISIBLE_STATUSES", "3"),
    ("MAX_CONNECTIONS", ""),
    ("TRUSTED_PROXIES", ""),
    ("CORS_ORIGINS", ""),
    ("WATCH_POLICY", "open"),
    ("MAX_PINGS_PER_MINUTE", "30"),
    ("MAX_STREAMS_PER_WATCHER", "16"),
];

/// `MAX_STREAM_SECS` when empty under `WATCH_POLICY=contacts`: how long a removed contact may
/// go on watching, at most.
pub const CONTACTS_MAX_STREAM_SECS: u64 = 3600;

/// The highest `MAX_PINGS_PER_MINUTE`: a thousand a second.
pub const PINGS_PER_MINUTE_CAP: u32 = 60_000;

/// Why the configuration could not be loaded.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A variable has a value the service cannot use.
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    /// `.env` exists but cannot be read or parsed.
    DotEnv(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                var,
                value,
                expected,
            } => write!(f, "invalid {var}={value:?}: expected {expected}"),
            ConfigError::DotEnv(reason) => write!(f, "cannot load .env: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment over `.env` in the working directory.
    pub fn from_env() -> Result<Config, ConfigError> {
        let dotenv = read_dotenv()?;
        Config::from_lookup(|name| {
            std::env::var(name)
                .ok()
                .or_else(|| dotenv.get(name).cloned())
        })
    }

    /// Builds the configuration from `lookup`, which returns a variable's value if it is set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars(&lookup);
        let limits = Limits {
            max_id_bytes: vars.number("MAX_ID_BYTES", 1, 65_536)?,
            max_status_bytes: vars.number("MAX_STATUS_BYTES", 1, 1 << 20)?,
            max_body_bytes: vars.number("MAX_BODY_BYTES", 16, 1 << 20)?,
            max_head_bytes: vars.number("MAX_HEAD_BYTES", 512, 1 << 20)?,
            max_users_per_stream: vars.number("MAX_USERS_PER_STREAM", 1, 65_536)?,
        };
        let store = read_store(&vars)?;
        let key_prefix = match store {
            // A brace in the prefix would make it, not the user, the keys' hash tag.
            StoreConfig::Cluster(_) => vars.parse(
                "KEY_PREFIX",
                |v| parse_prefix(v).filter(|p| !p.contains(['{', '}'])),
                CLUSTER_PREFIX_EXPECTED,
            )?,
            _ => vars.parse("KEY_PREFIX", parse_prefix, PREFIX_EXPECTED)?,
        };
        let (watch_policy, max_stream) = read_watching(&vars, &store)?;
        let redis_tls = read_tls(&vars, &store)?;
        Ok(Config {
            listen: vars.parse("LISTEN", parse_listen, LISTEN_EXPECTED)?,
            store,
            redis_tls,
            key_prefix,
            keepalive: vars.seconds("KEEPALIVE_SECS")?,
            max_stream,
            log_level: vars.parse("LOG_LEVEL", parse_level, LEVEL_EXPECTED)?,
            limits,
            redis_timeout: Duration::from_millis(vars.number("REDIS_TIMEOUT_MS", 10, 60_000)?),
            redis_pool_size: vars.number("REDIS_POOL_SIZE", 1, 1024)?,
            redis_wait_replicas: vars.number("REDIS_WAIT_REPLICAS", 0, 16)?,
            write_timeout: vars.seconds("WRITE_TIMEOUT_SECS")?,
            stream_send_buffer: vars.number("STREAM_SEND_BUFFER_BYTES", 4096, 1 << 24)?,
            request_timeout: vars.seconds("REQUEST_TIMEOUT_SECS")?,
            idle_timeout: vars.seconds("IDLE_TIMEOUT_SECS")?,
            subscriber_queue: vars.number("SUBSCRIBER_QUEUE", 1, 65_536)?,
            presence: Rules {
                device_ttl: vars.seconds("DEVICE_TTL_SECS")?,
                max_devices: vars.number("MAX_DEVICES_PER_USER", 1, 1024)?,
                priority: vars.parse("STATUS_PRIORITY", parse_statuses, STATUSES_EXPECTED)?,
                invisible: vars.parse("INVISIBLE_STATUSES", parse_statuses, STATUSES_EXPECTED)?,
            },
            cors: vars.parse("CORS_ORIGINS", parse_cors, CORS_EXPECTED)?,
            trusted_proxies: vars.parse("TRUSTED_PROXIES", parse_trusted, TRUSTED_EXPECTED)?,
            max_connections: match vars.value("MAX_CONNECTIONS").trim() {
                "" => None,
                _ => Some(vars.number("MAX_CONNECTIONS", 1, 10_000_000)?),
            },
            watch_policy,
            max_pings_per_minute: match vars.number(
                "MAX_PINGS_PER_MINUTE",
                0,
                PINGS_PER_MINUTE_CAP,
            )? {
                0 => None,
                n => Some(n),
            },
            max_streams_per_watcher: vars.number("MAX_STREAMS_PER_WATCHER", 1, 65_536)?,
        })
    }
}

const STATUSES_EXPECTED: &str =
    "empty, or a comma-separated list of distinct, non-empty statuses like 2,0,1";
const PREFIX_EXPECTED: &str = "printable ASCII without spaces, at most 64 bytes";
const CLUSTER_PREFIX_EXPECTED: &str =
    "printable ASCII without spaces, { or } (with a cluster REDIS), at most 64 bytes";
const LEVEL_EXPECTED: &str = "one of off, error, warn, info, debug, trace";
const TRUSTED_EXPECTED: &str =
    "empty, or a comma-separated list of addresses and CIDR ranges like 10.0.0.0/8, ::1";
const CORS_EXPECTED: &str =
    "empty, * or a comma-separated list of origins like https://app.example.com";

/// Typed access to variables, each with its default from [`DEFAULTS`] and the error naming it.
struct Vars<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    /// The variable's value, or its default if unset.
    fn value(&self, var: &str) -> String {
        (self.0)(var).unwrap_or_else(|| {
            let (_, default) = DEFAULTS
                .iter()
                .find(|(name, _)| *name == var)
                .expect("every variable read has a default in DEFAULTS");
            (*default).to_owned()
        })
    }

    fn parse<T>(
        &self,
        var: &'static str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let value = self.value(var);
        parse(value.trim()).ok_or_else(|| ConfigError::Invalid {
            var,
            value,
            expected: expected.to_owned(),
        })
    }

    fn number<T: FromStr + PartialOrd + ToString>(
        &self,
        var: &'static str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let value = self.value(var);
        match value.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(ConfigError::Invalid {
                var,
                value,
                expected: format!(
                    "a whole number from {} to {}",
                    min.to_string(),
                    max.to_string()
                ),
            }),
        }
    }

    fn seconds(&self, var: &'static str) -> Result<Duration, ConfigError> {
        self.number(var, 1, 86_400).map(Duration::from_secs)
    }
}

fn read_dotenv() -> Result<HashMap<String, String>, ConfigError> {
    let iter = match dotenvy::from_filename_iter(".env") {
        Ok(iter) => iter,
        Err(e) if e.not_found() => return Ok(HashMap::new()),
        Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
    };
    iter.map(|item| item.map_err(|e| ConfigError::DotEnv(e.to_string())))
        .collect()
}

/// A comma-separated list of distinct, non-empty statuses; empty for none.
fn parse_statuses(value: &str) -> Option<Vec<String>> {
    if value.is_empty() {
        return Some(Vec::new());
    }
    let statuses: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    let distinct: std::collections::HashSet<&String> = statuses.iter().collect();
    let ok = statuses.iter().all(|s| !s.is_empty()) && distinct.len() == statuses.len();
    ok.then_some(statuses)
}

fn parse_prefix(value: &str) -> Option<String> {
    let ok = value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_owned())
}

fn parse_level(value: &str) -> Option<LevelFilter> {
    value.parse().ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::address::REDIS_EXPECTED;
    use super::*;

    pub(super) fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.listen,
            Listen {
                host: String::new(),
                port: 8080
            }
        );
        assert_eq!(c.store, StoreConfig::Redis("redis://127.0.0.1:6379".into()));
        assert_eq!(c.key_prefix, "heartbeat:");
        assert_eq!(c.keepalive, Duration::from_secs(25));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.max_connections, None);
        assert_eq!(c.subscriber_queue, 1024);
    }

    /// `NAME=value` lines of the shipped `.env`.
    fn shipped_dotenv() -> Vec<(String, String)> {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env")).unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.split_once('=').expect("NAME=value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// The variables table of README's Configuration section: name and default column.
    fn readme_defaults() -> Vec<(String, String)> {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = text
            .split("## Configuration")
            .nth(1)
            .expect("a Configuration section");
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                let name = cells[0].trim_matches('`').to_owned();
                let default = match cells[cells.len() - 1] {
                    "empty" => String::new(),
                    d => d.trim_matches('`').to_owned(),
                };
                (name, default)
            })
            .collect()
    }

    fn defaults() -> Vec<(String, String)> {
        DEFAULTS
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_dotenv_lists_every_variable_with_its_default() {
        assert_eq!(shipped_dotenv(), defaults());
    }

    #[test]
    fn the_shipped_dotenv_takes_any_watch_policy() {
        for (policy, max_stream) in [("open", None), ("claimed", None), ("contacts", Some(3600))] {
            let mut vars = shipped_dotenv();
            vars.push(("WATCH_POLICY".into(), policy.into()));
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let c = config(&vars).unwrap_or_else(|e| panic!("{policy}: {e}"));
            assert_eq!(
                c.max_stream,
                max_stream.map(Duration::from_secs),
                "{policy}"
            );
        }
    }

    #[test]
    fn readme_lists_every_variable_with_its_default() {
        assert_eq!(readme_defaults(), defaults());
    }

    #[test]
    fn listen_accepts_host_port_and_v6() {
        let listen = |v: &str| config(&[("LISTEN", v)]).map(|c| c.listen);
        assert_eq!(
            listen("127.0.0.1:9000").unwrap(),
            Listen {
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
        assert_eq!(listen("[::1]:80").unwrap().host, "::1");
        assert_eq!(listen("localhost:1").unwrap().host, "localhost");
        for bad in ["8080", ":http", "::1:80", "[nope]:80", ":70000", ""] {
            let err = listen(bad).unwrap_err();
            assert!(err.to_string().contains("LISTEN"), "{bad}: {err}");
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("redis", 6379), "redis:6379");
    }

    #[test]
    fn redis_accepts_addresses_urls_and_memory() {
        let store = |v: &str| config(&[("REDIS", v)]).map(|c| c.store);
        let redis = |u: &str| StoreConfig::Redis(u.into());
        assert_eq!(store(":7000").unwrap(), redis("redis://127.0.0.1:7000"));
        assert_eq!(store("redis:6379").unwrap(), redis("redis://redis:6379"));
        assert_eq!(store("[::1]:6379").unwrap(), redis("redis://[::1]:6379"));
        assert_eq!(
            store("redis://u:p@host:1/2").unwrap(),
            redis("redis://u:p@host:1/2")
        );
        assert_eq!(store("memory").unwrap(), StoreConfig::Memory);
        let cluster = |seeds: &[&str], userinfo: Option<&str>| {
            StoreConfig::Cluster(ClusterSeeds {
                seeds: seeds.iter().map(|s| s.to_string()).collect(),
                userinfo: userinfo.map(str::to_owned),
                tls: false,
            })
        };
        assert_eq!(
            store("cluster://:7000, redis-a:7001,[::1]:7002").unwrap(),
            cluster(&["127.0.0.1:7000", "redis-a:7001", "[::1]:7002"], None)
        );
        assert_eq!(
            store("cluster://u:p@a:1").unwrap(),
            cluster(&["a:1"], Some("u:p"))
        );
        for bad in [
            "cluster://",
            "cluster://a",
            "cluster://a:1,",
            "cluster://@a:1",
        ] {
            assert!(store(bad).is_err(), "{bad}");
        }
        let err = store("redis").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("invalid REDIS=\"redis\": expected {REDIS_EXPECTED}")
        );
    }

    #[test]
    fn tls_addresses_are_read_and_their_files_need_one() {
        let store = |v: &str| config(&[("REDIS", v)]).map(|c| c.store);
        let tls = store("rediss://u:p@localhost:6380/1").unwrap();
        assert!(tls.tls());
        assert_eq!(tls.to_string(), "rediss://u:***@localhost:6380/1");
        let cluster = store("clusters://u:p@a:1,b:2").unwrap();
        assert!(cluster.tls());
        assert_eq!(cluster.to_string(), "clusters://u:***@a:1,b:2");
        let StoreConfig::Cluster(seeds) = cluster else {
            panic!("a cluster")
        };
        assert_eq!(seeds.url("a:1"), "rediss://u:p@a:1");
        assert!(!store("cluster://a:1").unwrap().tls());
        assert!(store("rediss://localhost:6380/#insecure").is_err());

        let dir = std::env::temp_dir().join(format!("hb-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let ca = ca.to_str().unwrap();
        let c = config(&[("REDIS", "rediss://h:1"), ("REDIS_CA_FILE", ca)]).unwrap();
        assert_eq!(
            c.redis_tls.ca,
            Some((ca.to_owned(), b"not checked here".to_vec()))
        );
        let err = config(&[("REDIS", "h:1"), ("REDIS_CA_FILE", ca)]).unwrap_err();
        assert!(err.to_string().contains("a TLS address"), "{err}");
        let err = config(&[("REDIS", "rediss://h:1"), ("REDIS_CLIENT_KEY_FILE", ca)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("REDIS_CLIENT_CERT_FILE set as well"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = config(&[
            ("REDIS", "rediss://h:1"),
            ("REDIS_CA_FILE", missing.to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid REDIS_CA_FILE="),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sentinel_addresses_are_read_with_the_sentinels_credentials_apart() {
        let c = config(&[
            ("REDIS", "sentinels://hb:pw@s1:26379, s2:26380/my-master"),
            ("SENTINEL_PASSWORD", "spw"),
        ])
        .unwrap();
        let StoreConfig::Sentinel(sentinel) = &c.store else {
            panic!("sentinel: {:?}", c.store)
        };
        assert_eq!(sentinel.sentinels, ["s1:26379", "s2:26380"]);
        assert_eq!(sentinel.master, "my-master");
        assert_eq!(sentinel.userinfo.as_deref(), Some("hb:pw"));
        assert!(sentinel.tls && c.store.tls());
        assert_eq!(sentinel.auth, Some((None, "spw".to_owned())));
        assert_eq!(sentinel.master_url("m:1"), "rediss://hb:pw@m:1");
        assert_eq!(
            c.store.to_string(),
            "sentinels://hb:***@s1:26379,s2:26380/my-master"
        );
        let plain = config(&[("REDIS", "sentinel://:26379/m")]).unwrap().store;
        let StoreConfig::Sentinel(plain) = plain else {
            panic!("sentinel")
        };
        assert_eq!((plain.auth, plain.tls), (None, false));
        for bad in [
            "sentinel://:26379",
            "sentinel://:26379/",
            "sentinel:///m",
            "sentinel://a/m",
        ] {
            assert!(config(&[("REDIS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_hidden_when_the_store_is_shown() {
        let shown = |url: &str| StoreConfig::Redis(url.into()).to_string();
        assert_eq!(shown("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(shown("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(shown("redis://h:1"), "redis://h:1");
        assert_eq!(StoreConfig::Memory.to_string(), "memory");
        let cluster = |userinfo: Option<&str>| {
            StoreConfig::Cluster(ClusterSeeds {
                seeds: vec!["a:1".into(), "b:2".into()],
                userinfo: userinfo.map(str::to_owned),
                tls: false,
            })
            .to_string()
        };
        assert_eq!(cluster(Some("u:secret")), "cluster://u:***@a:1,b:2");
        assert_eq!(cluster(Some("u")), "cluster://u@a:1,b:2");
        assert_eq!(cluster(None), "cluster://a:1,b:2");
    }

    #[test]
    fn a_cluster_refuses_braces_in_the_key_prefix() {
        let with = |prefix: &str, redis: &str| {
            config(&[("REDIS", redis), ("KEY_PREFIX", prefix)]).map(|c| c.key_prefix)
        };
        assert_eq!(with("{hb}:", ":6379").unwrap(), "{hb}:");
        let err = with("{hb}:", "cluster://:7000").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("invalid KEY_PREFIX=\"{{hb}}:\": expected {CLUSTER_PREFIX_EXPECTED}")
        );
        assert_eq!(with("hb:", "cluster://:7000").unwrap(), "hb:");
    }

    #[test]
    fn numbers_are_range_checked_and_named() {
        let err = config(&[("KEEPALIVE_SECS", "0")]).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid KEEPALIVE_SECS=\"0\": expected a whole number from 1 to 86400"
        );
        let err = config(&[("MAX_BODY_BYTES", "4k")]).unwrap_err();
        assert!(err.to_string().starts_with("invalid MAX_BODY_BYTES=\"4k\""));
        let c = config(&[("MAX_CONNECTIONS", "100"), ("SUBSCRIBER_QUEUE", "8")]).unwrap();
        assert_eq!(c.max_connections, Some(100));
        assert_eq!(c.subscriber_queue, 8);
    }

    #[test]
    fn presence_rules_are_read_and_bad_status_lists_refused() {
        let c = config(&[
            ("DEVICE_TTL_SECS", "5"),
            ("STATUS_PRIORITY", " 2, 0 ,1,x"),
            ("INVISIBLE_STATUSES", ""),
        ])
        .unwrap();
        assert_eq!(c.presence.device_ttl, Duration::from_secs(5));
        assert_eq!(c.presence.priority, ["2", "0", "1", "x"]);
        assert!(c.presence.invisible.is_empty());
        assert_eq!(c.presence.max_devices, 16);
        for (var, bad) in [
            ("STATUS_PRIORITY", "2,,1"),
            ("STATUS_PRIORITY", "2,0,2"),
            ("INVISIBLE_STATUSES", "3,"),
            ("INVISIBLE_STATUSES", "3, 3"),
        ] {
            let err = config(&[(var, bad)]).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("invalid {var}={bad:?}: expected {STATUSES_EXPECTED}")
            );
        }
        assert!(config(&[("MAX_DEVICES_PER_USER", "0")]).is_err());
    }

    #[test]
    fn prefix_and_level_are_validated() {
        assert!(config(&[("KEY_PREFIX", "a b")]).is_err());
        assert!(config(&[("LOG_LEVEL", "loud")]).is_err());
        let c = config(&[("KEY_PREFIX", "hb{1}:"), ("LOG_LEVEL", "debug")]).unwrap();
        assert_eq!(c.key_prefix, "hb{1}:");
        assert_eq!(c.log_level, LevelFilter::Debug);
    }
}
