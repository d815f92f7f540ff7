//! Who may call: the browser origins allowed by CORS (`CORS_ORIGINS`), the peers whose
//! `X-User-Claim` is believed (`TRUSTED_PROXIES`), and who may watch whom (`WATCH_POLICY`).

use std::fmt;
use std::time::Duration;

use super::{CONTACTS_MAX_STREAM_SECS, ConfigError, StoreConfig, Vars};

/// Who may watch whom: open a stream of a user, or read their `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchPolicy {
    /// Anyone who reaches the port may watch anyone.
    Open,
    /// The watcher must be claimed (`X-User-Claim` from a trusted peer); then anyone.
    Claimed,
    /// Claimed, and the watched user's set `<prefix>watchers:<user>`, kept by the app, must
    /// hold the watcher (or `*`); a user may always watch themself.
    Contacts,
}

impl WatchPolicy {
    pub fn name(self) -> &'static str {
        match self {
            WatchPolicy::Open => "open",
            WatchPolicy::Claimed => "claimed",
            WatchPolicy::Contacts => "contacts",
        }
    }
}

const WATCH_POLICY_EXPECTED: &str = "one of open, claimed, contacts";

fn parse_watch_policy(value: &str) -> Option<WatchPolicy> {
    let policies = [
        WatchPolicy::Open,
        WatchPolicy::Claimed,
        WatchPolicy::Contacts,
    ];
    policies.into_iter().find(|p| p.name() == value)
}

/// The longest `MAX_STREAM_SECS`: 30 days.
const MAX_STREAM: u64 = 30 * 86_400;

/// `WATCH_POLICY`, and `MAX_STREAM_SECS` as it applies under it (`None`: streams never end;
/// empty, the default, is that, or [`CONTACTS_MAX_STREAM_SECS`] under `contacts`).
/// `contacts` needs Redis, and streams that end, so that a removed contact stops watching.
pub(super) fn read_watching<F: Fn(&str) -> Option<String>>(
    vars: &Vars<'_, F>,
    store: &StoreConfig,
) -> Result<(WatchPolicy, Option<Duration>), ConfigError> {
    let policy = vars.parse("WATCH_POLICY", parse_watch_policy, WATCH_POLICY_EXPECTED)?;
    if policy == WatchPolicy::Contacts && *store == StoreConfig::Memory {
        return Err(ConfigError::Invalid {
            var: "WATCH_POLICY",
            value: "contacts".into(),
            expected: "open or claimed with REDIS=memory: contacts reads the sets the app \
                       writes in Redis, and memory mode has nowhere for the app to write them"
                .into(),
        });
    }
    // Empty (the default): never, or an hour under contacts.
    let value = vars.value("MAX_STREAM_SECS");
    let secs = match value.trim() {
        "" if policy == WatchPolicy::Contacts => CONTACTS_MAX_STREAM_SECS,
        "" => 0,
        _ => vars.number("MAX_STREAM_SECS", 0, MAX_STREAM)?,
    };
    if policy == WatchPolicy::Contacts && secs == 0 {
        return Err(ConfigError::Invalid {
            var: "MAX_STREAM_SECS",
            value,
            expected: format!(
                "empty or a whole number from 1 to {MAX_STREAM} with WATCH_POLICY=contacts: a \
                 stream that never ends would let a removed contact watch for ever"
            ),
        });
    }
    Ok((policy, (secs > 0).then(|| Duration::from_secs(secs))))
}

/// The peers whose `X-User-Claim` is believed (`TRUSTED_PROXIES`): addresses and CIDR ranges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedProxies(Vec<(std::net::IpAddr, u8)>);

impl TrustedProxies {
    /// No list: any peer may claim any user.
    pub fn is_unset(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` may send a claim: always when no list is set.
    pub fn trusts(&self, peer: Option<std::net::IpAddr>) -> bool {
        if self.is_unset() {
            return true;
        }
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return false;
        };
        self.0.iter().any(|&(net, len)| in_range(peer, net, len))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .0
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        f.write_str(&ranges.join(", "))
    }
}

/// Whether `ip` is in `net/len` (both of one family).
fn in_range(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(ip), V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (V6(ip), V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Cross-origin access for browsers (`CORS_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers: same origin only, as behind the proxy.
    Off,
    /// `*`: any origin.
    Any,
    /// These origins exactly (`scheme://host[:port]`).
    Origins(Vec<String>),
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    pub fn allow(&self, origin: Option<&[u8]>) -> Option<String> {
        match self {
            Cors::Off => None,
            Cors::Any => Some("*".into()),
            Cors::Origins(allowed) => {
                let origin = std::str::from_utf8(origin?).ok()?;
                allowed
                    .iter()
                    .any(|a| a == origin)
                    .then(|| origin.to_owned())
            }
        }
    }
}

pub(super) fn parse_trusted(value: &str) -> Option<TrustedProxies> {
    if value.is_empty() {
        return Some(TrustedProxies::default());
    }
    let ranges = value.split(',').map(|item| {
        let item = item.trim();
        let (ip, len) = match item.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (item, None),
        };
        let ip: std::net::IpAddr = ip.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len.parse::<u8>().ok().filter(|l| *l <= max)?,
        };
        Some((
            ip.to_canonical(),
            if ip.is_ipv6() && ip.to_canonical().is_ipv4() {
                len.saturating_sub(96)
            } else {
                len
            },
        ))
    });
    ranges.collect::<Option<Vec<_>>>().map(TrustedProxies)
}

pub(super) fn parse_cors(value: &str) -> Option<Cors> {
    match value {
        "" => return Some(Cors::Off),
        "*" => return Some(Cors::Any),
        _ => {}
    }
    let origins: Vec<String> = value
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .collect();
    let valid = |o: &String| {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"));
        rest.is_some_and(|host| !host.is_empty() && !host.contains(['/', ' ', '*']))
    };
    origins.iter().all(valid).then_some(Cors::Origins(origins))
}

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    #[test]
    fn cors_is_off_any_or_a_list_of_origins() {
        let cors = |v: &str| config(&[("CORS_ORIGINS", v)]).map(|c| c.cors);
        assert_eq!(config(&[]).unwrap().cors, Cors::Off);
        assert_eq!(cors("*").unwrap(), Cors::Any);
        let list = cors("https://a.example, http://b.example:8080/").unwrap();
        assert_eq!(
            list,
            Cors::Origins(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ])
        );
        assert_eq!(
            list.allow(Some(b"https://a.example")),
            Some("https://a.example".into())
        );
        assert_eq!(list.allow(Some(b"https://evil.example")), None);
        assert_eq!(list.allow(None), None);
        assert_eq!(Cors::Any.allow(None), Some("*".into()));
        assert_eq!(Cors::Off.allow(Some(b"https://a.example")), None);
        for bad in [
            "a.example",
            "https://",
            "https://a.example/path",
            "https://*.example",
        ] {
            assert!(cors(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn watch_policy_is_open_claimed_or_contacts_and_contacts_needs_redis_and_ending_streams() {
        let c = config(&[]).unwrap();
        assert_eq!(c.watch_policy, WatchPolicy::Open);
        assert_eq!(c.max_stream, None);
        assert_eq!(c.max_pings_per_minute, Some(30));
        assert_eq!(c.max_streams_per_watcher, 16);
        let claimed = config(&[("WATCH_POLICY", "claimed"), ("REDIS", "memory")]).unwrap();
        assert_eq!(claimed.watch_policy, WatchPolicy::Claimed);
        assert_eq!(claimed.max_stream, None);

        let contacts = config(&[("WATCH_POLICY", "contacts")]).unwrap();
        assert_eq!(contacts.watch_policy, WatchPolicy::Contacts);
        assert_eq!(
            contacts.max_stream,
            Some(std::time::Duration::from_secs(3600))
        );
        let short = config(&[("WATCH_POLICY", "contacts"), ("MAX_STREAM_SECS", "60")]);
        assert_eq!(
            short.unwrap().max_stream,
            Some(std::time::Duration::from_secs(60))
        );
        let never = config(&[("WATCH_POLICY", "contacts"), ("MAX_STREAM_SECS", "0")]);
        let err = never.unwrap_err().to_string();
        assert!(
            err.contains("MAX_STREAM_SECS") && err.contains("from 1"),
            "{err}"
        );
        let memory = config(&[("WATCH_POLICY", "contacts"), ("REDIS", "memory")]);
        let err = memory.unwrap_err().to_string();
        assert!(
            err.contains("WATCH_POLICY") && err.contains("memory mode"),
            "{err}"
        );
        for bad in ["", "Open", "friends"] {
            let err = config(&[("WATCH_POLICY", bad)]).unwrap_err().to_string();
            assert!(err.contains("open, claimed, contacts"), "{bad}: {err}");
        }

        let off = config(&[("MAX_PINGS_PER_MINUTE", "0")]).unwrap();
        assert_eq!(off.max_pings_per_minute, None);
        for bad in ["60001", "-1", "x"] {
            assert!(config(&[("MAX_PINGS_PER_MINUTE", bad)]).is_err(), "{bad}");
        }
        assert!(config(&[("MAX_STREAMS_PER_WATCHER", "0")]).is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_and_ranges_of_either_family() {
        let trusted = |v: &str| config(&[("TRUSTED_PROXIES", v)]).map(|c| c.trusted_proxies);
        let none = trusted("").unwrap();
        assert!(none.is_unset() && none.trusts(None));
        let list = trusted("10.1.0.0/16, 192.168.1.7,fd00::/8").unwrap();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(list.trusts(ip("10.1.200.3")));
        assert!(
            list.trusts(ip("::ffff:10.1.0.1")),
            "IPv4 seen on a dual-stack socket"
        );
        assert!(list.trusts(ip("192.168.1.7")));
        assert!(list.trusts(ip("fd12::1")));
        assert!(!list.trusts(ip("10.2.0.1")));
        assert!(!list.trusts(ip("192.168.1.8")));
        assert!(!list.trusts(ip("fe80::1")));
        assert!(!list.trusts(None));
        assert!(trusted("0.0.0.0/0").unwrap().trusts(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "1.2.3.4,,", "::1/129"] {
            let err = trusted(bad).unwrap_err().to_string();
            assert!(err.contains("TRUSTED_PROXIES"), "{bad}: {err}");
        }
    }
}
