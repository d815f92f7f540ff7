//! Who may call: the browser origins allowed by CORS (`CORS_ORIGINS`) and the peers whose
//! `X-User-Claim` is believed (`TRUSTED_PROXIES`).

use std::fmt;

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
