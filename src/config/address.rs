//! Addresses: where to listen (`LISTEN`) and which store to reach (`REDIS`), parsed and
//! checked at start, and shown with passwords hidden.

use std::fmt;

use super::{ConfigError, Vars};

pub(super) const LISTEN_EXPECTED: &str = "host:port, :port or [v6]:port";
pub(super) const REDIS_EXPECTED: &str = "host:port, :port, redis://[user:pass@]host:port[/db], \
     cluster://[user:pass@]host:port[,host:port...], sentinel://[user:pass@]host:port[,host:port...]/master, \
     the same with rediss://, clusters:// or sentinels:// for TLS, or memory";

/// The `LISTEN` address, kept as text until bound so host names resolve at bind time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Empty for all interfaces.
    pub host: String,
    pub port: u16,
}

/// Which store backs the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In-process state for a single instance; lost on exit.
    Memory,
    /// A `redis://` or `rediss://` URL.
    Redis(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(ClusterSeeds),
    /// Sentinels, and the name of the master they watch.
    Sentinel(SentinelConfig),
}

/// `sentinel://[user:pass@]host:port[,host:port...]/<master>`: the sentinels to ask for the
/// master named `master`; the URL's credentials are the master's, the sentinels' own come from
/// `SENTINEL_USERNAME` and `SENTINEL_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The master's name, as the sentinels monitor it.
    pub master: String,
    /// The master's credentials: `user:pass`, `:pass` or `user`, as in the URL.
    pub userinfo: Option<String>,
    /// Whether the sentinels, the master and the replicas are reached by TLS (`sentinels://`).
    pub tls: bool,
    /// The sentinels' user and password, if they ask for one.
    pub auth: Option<(Option<String>, String)>,
}

impl SentinelConfig {
    /// The URL of the master at `addr` (a placeholder until Sentinel names it).
    pub fn master_url(&self, addr: &str) -> String {
        node_url(self.tls, self.userinfo.as_deref(), addr)
    }
}

/// The `redis://` (or, with `tls`, `rediss://`) URL of the server at `addr` (`host:port`), with
/// `userinfo` (`user:pass`, as a URL spells it) if there is one.
pub fn node_url(tls: bool, userinfo: Option<&str>, addr: &str) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@{addr}"),
        None => format!("{scheme}://{addr}"),
    }
}

/// `cluster://[user:pass@]host:port[,host:port...]`: where to first ask a Redis Cluster for its
/// nodes, and the credentials for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSeeds {
    /// `host:port` of each seed.
    pub seeds: Vec<String>,
    /// `user:pass`, `:pass` or `user`, as in the URL.
    pub userinfo: Option<String>,
    /// Whether every node is reached by TLS (`clusters://`).
    pub tls: bool,
}

impl StoreConfig {
    /// Whether the store is reached by TLS.
    pub fn tls(&self) -> bool {
        match self {
            StoreConfig::Memory => false,
            StoreConfig::Redis(url) => url.starts_with("rediss://"),
            StoreConfig::Cluster(cluster) => cluster.tls,
            StoreConfig::Sentinel(sentinel) => sentinel.tls,
        }
    }
}

impl ClusterSeeds {
    /// The `redis://` (or `rediss://`) URL of the node at `addr` (`host:port`), with the
    /// cluster's credentials.
    pub fn url(&self, addr: &str) -> String {
        node_url(self.tls, self.userinfo.as_deref(), addr)
    }
}

/// `memory`, or the Redis URL with its password hidden, for logs.
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match self {
            StoreConfig::Memory => return f.write_str("memory"),
            StoreConfig::Redis(url) => url,
            StoreConfig::Cluster(cluster) => {
                f.write_str(if cluster.tls {
                    "clusters://"
                } else {
                    "cluster://"
                })?;
                hidden(f, &cluster.userinfo)?;
                return f.write_str(&cluster.seeds.join(","));
            }
            StoreConfig::Sentinel(sentinel) => {
                f.write_str(if sentinel.tls {
                    "sentinels://"
                } else {
                    "sentinel://"
                })?;
                hidden(f, &sentinel.userinfo)?;
                return write!(f, "{}/{}", sentinel.sentinels.join(","), sentinel.master);
            }
        };
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => write!(f, "{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                    None => f.write_str(url),
                }
            }
            _ => f.write_str(url),
        }
    }
}

/// `userinfo@` with its password hidden.
fn hidden(f: &mut fmt::Formatter<'_>, userinfo: &Option<String>) -> fmt::Result {
    match userinfo.as_deref().map(|u| (u, u.split_once(':'))) {
        Some((_, Some((user, _)))) => write!(f, "{user}:***@"),
        Some((userinfo, None)) => write!(f, "{userinfo}@"),
        None => Ok(()),
    }
}

pub(super) fn parse_listen(value: &str) -> Option<Listen> {
    let (host, port) = value.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6
        }
        None if host.contains(':') || host.contains(char::is_whitespace) => return None,
        None => host,
    };
    Some(Listen {
        host: host.to_owned(),
        port,
    })
}

/// `host:port`, with an IPv6 host in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `REDIS`, and under Sentinel the sentinels' credentials (`SENTINEL_USERNAME`,
/// `SENTINEL_PASSWORD`).
pub(super) fn read_store<F: Fn(&str) -> Option<String>>(
    vars: &Vars<'_, F>,
) -> Result<StoreConfig, ConfigError> {
    let mut store = vars.parse("REDIS", parse_store, REDIS_EXPECTED)?;
    if let StoreConfig::Sentinel(sentinel) = &mut store {
        let password = vars.value("SENTINEL_PASSWORD");
        let user = vars.value("SENTINEL_USERNAME");
        sentinel.auth = match (user.trim(), password.as_str()) {
            ("", "") => None,
            (user, password) => Some((
                (!user.is_empty()).then(|| user.to_owned()),
                password.to_owned(),
            )),
        };
    }
    Ok(store)
}

pub(super) fn parse_store(value: &str) -> Option<StoreConfig> {
    if value == "memory" {
        return Some(StoreConfig::Memory);
    }
    if let Some(cluster) = value.strip_prefix("cluster://") {
        return parse_cluster(cluster, false).map(StoreConfig::Cluster);
    }
    if let Some(cluster) = value.strip_prefix("clusters://") {
        return parse_cluster(cluster, true).map(StoreConfig::Cluster);
    }
    for (scheme, tls) in [("sentinel://", false), ("sentinels://", true)] {
        if let Some(rest) = value.strip_prefix(scheme) {
            let (hosts, master) = rest.rsplit_once('/')?;
            let valid = |c: char| c.is_ascii_graphic() && !matches!(c, '/' | '@' | ',');
            if master.is_empty() || !master.chars().all(valid) {
                return None;
            }
            let seeds = parse_cluster(hosts, tls)?;
            return Some(StoreConfig::Sentinel(SentinelConfig {
                sentinels: seeds.seeds,
                master: master.to_owned(),
                userinfo: seeds.userinfo,
                tls,
                auth: None,
            }));
        }
    }
    // The redis crate's `#insecure` would skip the certificate check: not offered.
    if value.contains('#') {
        return None;
    }
    let url = if value.starts_with("redis://") || value.starts_with("rediss://") {
        value.to_owned()
    } else {
        format!("redis://{}", parse_address(value)?)
    };
    // Let the redis crate reject what it could not connect to, now rather than later.
    redis::Client::open(url.as_str()).ok()?;
    Some(StoreConfig::Redis(url))
}

/// `host:port` or `:port` (for 127.0.0.1) as `host:port`.
fn parse_address(value: &str) -> Option<String> {
    let listen = parse_listen(value)?;
    let host = match listen.host.as_str() {
        "" => "127.0.0.1",
        h => h,
    };
    Some(host_port(host, listen.port))
}

/// What follows `cluster://` (or `clusters://`, `tls`): `[user:pass@]host:port[,host:port...]`.
fn parse_cluster(value: &str, tls: bool) -> Option<ClusterSeeds> {
    let (userinfo, hosts) = match value.rsplit_once('@') {
        Some((userinfo, hosts)) if !userinfo.is_empty() => (Some(userinfo.to_owned()), hosts),
        Some(_) => return None,
        None => (None, value),
    };
    let seeds = hosts
        .split(',')
        .map(|host| parse_address(host.trim()))
        .collect::<Option<Vec<String>>>()?;
    let cluster = ClusterSeeds {
        seeds,
        userinfo,
        tls,
    };
    for seed in &cluster.seeds {
        redis::Client::open(cluster.url(seed).as_str()).ok()?;
    }
    Some(cluster)
}
