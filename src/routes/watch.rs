//! Who may watch whom (`WATCH_POLICY`): the watcher of a stream or a `/status`, the streams it
//! may hold, and the users it may see. A user the watcher may not see is answered exactly as
//! a user never seen: nothing in an answer tells the two apart.

use std::net::IpAddr;

use super::{Outcome, Routes};
use crate::config::WatchPolicy;
use crate::http::{JSON, Request, Response};
use crate::metrics::WatchRefusal;
use crate::ping;
use crate::stream::Subscribe;

#[cold]
#[inline(never)]
fn unavailable(watcher: &str, e: &crate::store::StoreError) -> Response {
    log::debug!("contacts of {watcher:?} not read: {e}");
    Response::text(503, &e.to_string())
}

/// Whether `request` is for a route that watches users.
pub(super) fn watches(request: &Request) -> bool {
    let path = request.path();
    path == "/status" || path == "/subscribe" || path.starts_with("/subscribe/")
}

impl Routes {
    /// The watcher of a `/subscribe` or `/status`: `None` under `open`, the claimed user
    /// otherwise, or the `401` (or the `400` of a malformed claim) to answer.
    fn watcher(&self, request: &Request, peer: Option<IpAddr>) -> Result<Option<String>, Response> {
        if self.policy == WatchPolicy::Open {
            return Ok(None);
        }
        let policy = self.policy.name();
        let unclaimed = |refusal, reason: String| {
            self.metrics.count_watch_refused(refusal);
            log::debug!("watch refused: {reason}");
            Err(Response::text(401, &reason).with_header("WWW-Authenticate", "X-User-Claim"))
        };
        let Some(header) = request.header("x-user-claim") else {
            let reason = format!("WATCH_POLICY={policy} needs the watcher's X-User-Claim");
            return unclaimed(WatchRefusal::NoClaim, reason);
        };
        if !self.trusted.trusts(peer) {
            let peer = peer.map_or("an unknown peer".into(), |p| p.to_string());
            let reason = format!(
                "WATCH_POLICY={policy} needs the watcher's X-User-Claim from TRUSTED_PROXIES, \
                 not from {peer}"
            );
            return unclaimed(WatchRefusal::UntrustedPeer, reason);
        }
        match ping::parse_claim(Some(header), &self.limits) {
            Ok(claim) => Ok(Some(claim.userid)),
            Err(rejection) => Err(super::refuse(&rejection)),
        }
    }

    /// A stream of the users the watcher may see, as a stream of users never seen for the
    /// others (under `contacts`, once [`Routes::check_contacts`] has left out those the
    /// watcher may not see); or the refusal.
    ///
    /// Runs on what becomes the stream's thread, which keeps every stack page it touched for
    /// the stream's life: the refusals are out of line. Measured: with this frame at 1.25 KiB,
    /// a stream of one user held 15.2 KiB of RSS instead of 11.1.
    #[inline(never)]
    pub(super) fn subscribe(
        &self,
        request: &Request,
        peer: Option<IpAddr>,
        mut subscribe: Subscribe,
    ) -> Outcome {
        let watcher = match self.watcher(request, peer) {
            Ok(Some(watcher)) => watcher,
            Ok(None) => return Outcome::Subscribe(subscribe),
            Err(response) => return Outcome::Respond(response),
        };
        let Some(slot) = self.watcher_streams.enter(&watcher) else {
            return self.too_many_streams(&watcher);
        };
        subscribe.slot = Some(slot);
        if self.contacts.is_some() {
            subscribe.unchecked_for = Some(watcher);
        }
        Outcome::Subscribe(subscribe)
    }

    /// Leaves out of `subscribe` the users its watcher may not see, under `contacts`, asking
    /// the store on another thread ([`ContactChecks`](crate::store::contacts::ContactChecks));
    /// or the `503` to answer when the store does not.
    ///
    /// The connection calls it once [`Routes::handle`] has returned, so that the wait for the
    /// answer goes no deeper into the stack than the stream itself will (measured: made
    /// within `handle`, stream threads kept a third stack page, 12 KiB instead of 8).
    #[inline(never)]
    pub fn check_contacts(&self, mut subscribe: Subscribe) -> Result<Subscribe, Response> {
        let (Some(watcher), Some(contacts)) = (subscribe.unchecked_for.take(), &self.contacts)
        else {
            return Ok(subscribe);
        };
        match contacts.check(&watcher, std::mem::take(&mut subscribe.users)) {
            Ok(allowed) => {
                subscribe.users = allowed;
                Ok(subscribe)
            }
            Err(e) => Err(unavailable(&watcher, &e)),
        }
    }

    #[cold]
    #[inline(never)]
    fn too_many_streams(&self, watcher: &str) -> Outcome {
        self.metrics
            .count_watch_refused(WatchRefusal::TooManyStreams);
        let max = self.watcher_streams.max();
        log::debug!("stream of {watcher:?} refused: {max} open already");
        let reason = format!("{watcher} holds {max} streams (MAX_STREAMS_PER_WATCHER) already");
        Outcome::Respond(Response::text(429, &reason).with_header("Retry-After", "10"))
    }

    /// `GET /status?user=...`: each user's last visible ping and whether they are online, or
    /// `null` (a user never seen, or hidden from the watcher), in one store round trip.
    pub(super) fn status(
        &self,
        request: &Request,
        peer: Option<IpAddr>,
        users: &[String],
    ) -> Response {
        let watcher = match self.watcher(request, peer) {
            Ok(watcher) => watcher,
            Err(response) => return response,
        };
        let only_for = watcher
            .as_deref()
            .filter(|_| self.policy == WatchPolicy::Contacts);
        match self.store.last_many(users, only_for) {
            Ok(presences) => {
                let mut body = serde_json::Map::new();
                for user in users {
                    body.insert(user.clone(), serde_json::Value::Null);
                }
                let now = ping::now_micros();
                for (user, presence) in presences {
                    let ping = serde_json::json!({
                        "time": presence.ping.time,
                        "status": presence.ping.status,
                        "online": presence.offline_at(now).is_none(),
                    });
                    body.insert(user, ping);
                }
                let body = serde_json::Value::Object(body).to_string();
                Response::typed(200, JSON, &body).with_header("Cache-Control", "no-store")
            }
            Err(e) => {
                log::debug!("status of {} users not read: {e}", users.len());
                Response::text(503, &e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{Cors, Limits};
    use crate::flood::{PingRate, WatcherStreams};
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use crate::presence::Rules;
    use crate::routes::tests::NoStreams;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    fn routes(policy: WatchPolicy, trusted: &str) -> Routes {
        let store = MemoryStore::new(Hub::new(4), Rules::default());
        let trusted = crate::config::Config::from_lookup(|v| {
            (v == "TRUSTED_PROXIES").then(|| trusted.to_owned())
        });
        Routes {
            store: Arc::new(store) as Arc<dyn Store>,
            streams: Arc::new(NoStreams),
            metrics: Arc::new(Metrics::default()),
            limits: Limits::default(),
            cors: Cors::Off,
            trusted: trusted.unwrap().trusted_proxies,
            policy,
            ping_rate: Some(PingRate::new(2)),
            watcher_streams: WatcherStreams::new(2),
            contacts: None,
        }
    }

    fn get(target: &str, claim: Option<&str>) -> Request {
        let mut headers = vec![("Host".to_owned(), b"x".to_vec())];
        if let Some(claim) = claim {
            headers.push(("X-User-Claim".to_owned(), claim.as_bytes().to_vec()));
        }
        Request {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers,
            body: Vec::new(),
        }
    }

    fn status_of(outcome: &Outcome) -> u16 {
        match outcome {
            Outcome::Respond(r) | Outcome::Pinged(r, _) => r.status,
            Outcome::Subscribe(_) => 200,
        }
    }

    const PROXY: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const STRANGER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));
    const BOB: &str = r#"{"userid":"bob"}"#;

    #[test]
    fn under_claimed_a_watch_needs_a_claim_from_a_trusted_peer() {
        let routes = routes(WatchPolicy::Claimed, "10.0.0.1");
        for target in [
            "/subscribe/alice",
            "/subscribe?user=alice",
            "/status?user=alice",
        ] {
            let none = routes.handle(&get(target, None), PROXY);
            let Outcome::Respond(none) = none else {
                panic!("{target}: {none:?}")
            };
            assert_eq!(none.status, 401, "{target}");
            assert!(none.body.contains("WATCH_POLICY=claimed"), "{}", none.body);
            let stranger = routes.handle(&get(target, Some(BOB)), STRANGER);
            let Outcome::Respond(stranger) = stranger else {
                panic!("{target}")
            };
            assert_eq!(stranger.status, 401, "{target}");
            assert!(stranger.body.contains("10.0.0.2"), "{}", stranger.body);
            assert_eq!(
                status_of(&routes.handle(&get(target, Some(BOB)), PROXY)),
                200
            );
        }
        let refused = &routes.metrics.watch_refused;
        let counts: Vec<u64> = refused
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [3, 3, 0]);
        // Under open, anyone; a claim from a stranger is still refused (403) as anywhere.
        let open = self::routes(WatchPolicy::Open, "10.0.0.1");
        assert_eq!(
            status_of(&open.handle(&get("/status?user=a", None), STRANGER)),
            200
        );
        assert_eq!(
            status_of(&open.handle(&get("/status?user=a", Some(BOB)), STRANGER)),
            403
        );
    }

    #[test]
    fn a_watcher_holds_at_most_its_streams_until_they_end() {
        let routes = routes(WatchPolicy::Claimed, "");
        let open = |claim| routes.handle(&get("/subscribe/alice", Some(claim)), None);
        let (first, second) = (open(BOB), open(BOB));
        let third = open(BOB);
        let Outcome::Respond(third) = third else {
            panic!("a third stream")
        };
        assert_eq!(third.status, 429);
        assert!(third.headers.iter().any(|(name, _)| *name == "Retry-After"));
        assert_eq!(
            status_of(&open(r#"{"userid":"carol"}"#)),
            200,
            "another watcher"
        );
        drop(first);
        assert_eq!(
            status_of(&open(BOB)),
            200,
            "a stream ended, a new one may open"
        );
        drop(second);
    }

    #[test]
    fn a_device_over_its_pings_a_minute_gets_429_with_retry_after() {
        let routes = routes(WatchPolicy::Open, "");
        let ping = |claim: &str| {
            let mut request = get("/ping", Some(claim));
            request.method = "POST".into();
            request.body = br#"{"status":"0"}"#.to_vec();
            match routes.handle(&request, None) {
                Outcome::Pinged(response, _) => response,
                other => panic!("{other:?}"),
            }
        };
        let phone = r#"{"userid":"u","clientid":"phone"}"#;
        assert_eq!(ping(phone).status, 200);
        assert_eq!(ping(phone).status, 200);
        let refused = ping(phone);
        assert_eq!(refused.status, 429);
        let (_, wait) = refused
            .headers
            .iter()
            .find(|(n, _)| *n == "Retry-After")
            .unwrap();
        let wait: u64 = wait.parse().unwrap();
        assert!((1..=70).contains(&wait), "{wait}");
        assert!(
            refused.body.contains("more than 2 pings a minute"),
            "{}",
            refused.body
        );
        assert_eq!(ping(r#"{"userid":"u","clientid":"laptop"}"#).status, 200);
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            count(&routes.metrics.pings_accepted_total),
            3,
            "the refused one not stored"
        );
        assert_eq!(count(&routes.metrics.pings_refused_rate_total), 1);
    }
}
