//! The API: which request does what. Answers pings, health and metrics, and turns a subscribe
//! request into a [`Subscribe`] for the connection to stream. Knows nothing of sockets, and
//! starts no thread.

use std::net::IpAddr;
use std::sync::Arc;

mod path;
mod watch;

use self::path::{Route, route};
use crate::config::{Cors, Limits, TrustedProxies, WatchPolicy};
use crate::flood::{PingRate, WatcherStreams};
use crate::http::{JSON, Request, Response};
use crate::metrics::{Metrics, PingOutcome, Readings};
use crate::ping::{self, Rejection};
use crate::store::Store;
use crate::store::contacts::ContactChecks;
use crate::stream::Subscribe;

/// What the connection should do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Respond(Response),
    /// Answer a `POST /ping`, and time it as what became of the ping.
    Pinged(Response, PingOutcome),
    /// Answer with an event stream of the users the request names.
    Subscribe(Subscribe),
}

/// What `/metrics` reads of the open streams, from whatever serves them.
pub trait StreamCounts: Send + Sync {
    /// Streams open now.
    fn open(&self) -> usize;
    /// Subscribers the hub dropped for falling behind.
    fn dropped_slow(&self) -> u64;
}

/// The routes with what they need.
pub struct Routes {
    pub store: Arc<dyn Store>,
    /// Read for `/metrics`; the connection serves the streams.
    pub streams: Arc<dyn StreamCounts>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub cors: Cors,
    pub trusted: TrustedProxies,
    pub policy: WatchPolicy,
    /// `MAX_PINGS_PER_MINUTE`, if any.
    pub ping_rate: Option<PingRate>,
    /// Streams held per watcher (`claimed` and `contacts`).
    pub watcher_streams: Arc<WatcherStreams>,
    /// Where new streams' users are checked, under `contacts` only.
    pub contacts: Option<ContactChecks>,
}

impl Routes {
    /// Answers `request`, which came from `peer` (`None` if unknown).
    pub fn handle(&self, request: &Request, peer: Option<IpAddr>) -> Outcome {
        // A watch route under a policy that needs the watcher refuses such a claim itself.
        let watching = self.policy != WatchPolicy::Open && watch::watches(request);
        if request.header("x-user-claim").is_some() && !self.trusted.trusts(peer) && !watching {
            let peer = peer.map_or("an unknown peer".into(), |p| p.to_string());
            log::debug!("refused an X-User-Claim from {peer}");
            let refused = Response::text(
                403,
                &format!("X-User-Claim is accepted only from TRUSTED_PROXIES, not from {peer}"),
            );
            return match request.method == "POST" && request.path() == "/ping" {
                true => Outcome::Pinged(refused, PingOutcome::Refused),
                false => Outcome::Respond(refused),
            };
        }
        let method = request.method.as_str();
        let route = route(request, &self.limits);
        let cors = matches!(
            route,
            Ok(Route::Ping | Route::Leave | Route::Subscribe(_) | Route::Status(_))
        )
        .then(|| self.cors.allow(request.header("origin")))
        .flatten();
        let mut outcome = match route {
            Ok(Route::Ping) if method == "POST" => {
                let (response, outcome) = self.ping(request);
                Outcome::Pinged(response, outcome)
            }
            Ok(Route::Leave) if method == "POST" => Outcome::Respond(self.leave(request)),
            Ok(Route::Ping | Route::Leave) if method == "OPTIONS" && self.cors != Cors::Off => {
                Outcome::Respond(preflight(
                    cors.is_some(),
                    "POST",
                    "Content-Type, X-User-Claim",
                ))
            }
            Ok(Route::Ping | Route::Leave) => Outcome::Respond(not_allowed("POST")),
            // Nothing to check under open; the policies' checks run in frames of their own,
            // which a stream's thread under open never touches (see `Routes::subscribe`).
            Ok(Route::Subscribe(subscribe))
                if method == "GET" && self.policy == WatchPolicy::Open =>
            {
                Outcome::Subscribe(subscribe)
            }
            Ok(Route::Subscribe(subscribe)) if method == "GET" => {
                self.subscribe(request, peer, subscribe)
            }
            Ok(Route::Subscribe(_) | Route::Status(_))
                if method == "OPTIONS" && self.cors != Cors::Off =>
            {
                // A reconnecting EventSource sends Last-Event-ID, which is not a simple header.
                Outcome::Respond(preflight(cors.is_some(), "GET", "Last-Event-ID"))
            }
            Ok(Route::Subscribe(_)) => Outcome::Respond(not_allowed("GET")),
            Ok(Route::Status(users)) if method == "GET" => {
                Outcome::Respond(self.status(request, peer, &users))
            }
            Ok(Route::Health) if method == "GET" => Outcome::Respond(self.health()),
            Ok(Route::Metrics) if method == "GET" => Outcome::Respond(self.metrics()),
            Ok(Route::Health | Route::Metrics | Route::Status(_)) => {
                Outcome::Respond(not_allowed("GET"))
            }
            Err(response) => Outcome::Respond(response),
        };
        if let Some(origin) = cors {
            let headers = match &mut outcome {
                Outcome::Respond(response) | Outcome::Pinged(response, _) => &mut response.headers,
                Outcome::Subscribe(subscribe) => &mut subscribe.headers,
            };
            headers.push(("Access-Control-Allow-Origin", origin));
            if let Cors::Origins(_) = self.cors {
                headers.push(("Vary", "Origin".into()));
            }
        }
        outcome
    }

    fn health(&self) -> Response {
        let store = self.store.kind().name();
        let (status, mut body) = match self.store.health() {
            Ok(()) => (200, serde_json::json!({ "status": "ok", "store": store })),
            Err(reason) => (
                503,
                serde_json::json!({
                    "status": "unavailable",
                    "store": store,
                    "reason": reason.to_string(),
                    "cause": reason.cause(),
                }),
            ),
        };
        // Under Sentinel, the master in use, or null while there is none.
        if let Some(master) = self.store.master() {
            body["master"] = serde_json::json!(master);
        }
        Response::typed(status, JSON, &body.to_string()).with_header("Cache-Control", "no-store")
    }

    fn metrics(&self) -> Response {
        let readings = Readings {
            streams: self.streams.open(),
            subscribers_dropped_slow: self.streams.dropped_slow(),
            feed_up: self.store.feed_up(),
        };
        let body = self.metrics.render(&readings);
        Response::typed(200, crate::metrics::CONTENT_TYPE, body.trim_end())
    }

    /// Stores the ping a `POST /ping` carries; the answer, and what became of the ping.
    fn ping(&self, request: &Request) -> (Response, PingOutcome) {
        let parsed = ping::parse_claim(request.header("x-user-claim"), &self.limits)
            .and_then(|claim| Ok((claim, ping::parse_status(&request.body, &self.limits)?)));
        let (claim, status) = match parsed {
            Ok(parsed) => parsed,
            Err(rejection) => {
                log::debug!("ping refused: {rejection}");
                self.metrics.count_refused(&rejection);
                return (refuse(&rejection), PingOutcome::Refused);
            }
        };
        let device = claim.clientid.as_deref().unwrap_or_default();
        let now = ping::now_micros();
        if let Some(rate) = &self.ping_rate
            && let Err(wait) = rate.admit(&claim.userid, device, now)
        {
            log::debug!("ping from {:?} ({device:?}) over the limit", claim.userid);
            Metrics::count(&self.metrics.pings_refused_rate_total);
            let reason = format!(
                "more than {} pings a minute from this device: retry in {wait} s",
                rate.per_minute()
            );
            let response =
                Response::text(429, &reason).with_header("Retry-After", wait.to_string());
            return (response, PingOutcome::Refused);
        }
        match (self.store).record(&claim.userid, device, Some(&status), now) {
            Ok(id) => {
                Metrics::count(&self.metrics.pings_accepted_total);
                log::debug!(
                    "ping from {:?} ({device:?}): status {status:?}, {}",
                    claim.userid,
                    Published(id)
                );
                (Response::empty(200), PingOutcome::Stored)
            }
            Err(e) => {
                log::debug!("ping from {:?} not stored: {e}", claim.userid);
                Metrics::count(&self.metrics.pings_refused_unavailable_total);
                (
                    Response::text(503, &e.to_string()),
                    PingOutcome::Unavailable,
                )
            }
        }
    }
}

impl Routes {
    /// `POST /leave`: ends the claimed device at once (sign-out, app closed); if it was the
    /// user's last live visible device, watchers are told the user went offline.
    fn leave(&self, request: &Request) -> Response {
        let claim = match ping::parse_claim(request.header("x-user-claim"), &self.limits) {
            Ok(claim) => claim,
            Err(rejection) => {
                log::debug!("leave refused: {rejection}");
                return refuse(&rejection);
            }
        };
        let device = claim.clientid.as_deref().unwrap_or_default();
        match (self.store).record(&claim.userid, device, None, ping::now_micros()) {
            Ok(id) => {
                log::debug!("{:?} ({device:?}) left: {}", claim.userid, Published(id));
                Response::empty(200)
            }
            Err(e) => {
                log::debug!("leave of {:?} not stored: {e}", claim.userid);
                Response::text(503, &e.to_string())
            }
        }
    }
}

/// What a ping or a leave published, for logs.
struct Published(Option<u64>);

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "event {id}"),
            None => f.write_str("nothing for watchers"),
        }
    }
}

/// The answer to a CORS preflight of a route taking `method` with `headers`.
fn preflight(allowed: bool, method: &str, headers: &'static str) -> Response {
    if !allowed {
        return Response::text(403, "origin not allowed");
    }
    Response::empty(204)
        .with_header("Access-Control-Allow-Methods", format!("{method}, OPTIONS"))
        .with_header("Access-Control-Allow-Headers", headers)
        .with_header("Access-Control-Max-Age", "600")
}

fn refuse(rejection: &Rejection) -> Response {
    Response::text(rejection.status_code(), &rejection.to_string())
}

fn not_found() -> Response {
    Response::text(404, "not found")
}

fn not_allowed(allow: &'static str) -> Response {
    Response::text(405, &format!("method not allowed: use {allow}")).with_header("Allow", allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::presence::Rules;
    use crate::store::memory::MemoryStore;
    use crate::stream::Form;

    /// No streams: what `/metrics` reads of them in these tests.
    pub(super) struct NoStreams;

    impl StreamCounts for NoStreams {
        fn open(&self) -> usize {
            0
        }
        fn dropped_slow(&self) -> u64 {
            0
        }
    }

    fn routes_with(cors: Cors) -> (Routes, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new(Hub::new(4), Rules::default()));
        let routes = Routes {
            store: Arc::clone(&store) as Arc<dyn Store>,
            streams: Arc::new(NoStreams),
            metrics: Arc::new(Metrics::default()),
            limits: Limits::default(),
            cors,
            trusted: TrustedProxies::default(),
            policy: WatchPolicy::Open,
            ping_rate: None,
            watcher_streams: WatcherStreams::new(16),
            contacts: None,
        };
        (routes, store)
    }

    fn routes() -> (Routes, Arc<MemoryStore>) {
        routes_with(Cors::Off)
    }

    fn request(method: &str, target: &str, claim: Option<&str>, body: &str) -> Request {
        let mut headers = vec![("Host".to_owned(), b"x".to_vec())];
        if let Some(claim) = claim {
            headers.push(("X-User-Claim".to_owned(), claim.as_bytes().to_vec()));
        }
        Request {
            method: method.into(),
            target: target.into(),
            minor_version: 1,
            headers,
            body: body.into(),
        }
    }

    fn respond(routes: &Routes, request: Request) -> Response {
        match routes.handle(&request, None) {
            Outcome::Respond(response) | Outcome::Pinged(response, _) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn subscribe(target: &str) -> Outcome {
        routes().0.handle(&request("GET", target, None, ""), None)
    }

    const CLAIM: &str = r#"{"userid":"u1","clientid":"c1"}"#;

    #[test]
    fn a_ping_is_stored_and_answered_with_an_empty_200() {
        let (routes, store) = routes();
        let response = respond(
            &routes,
            request("POST", "/ping", Some(CLAIM), r#"{"status":"a"}"#),
        );
        assert_eq!(response, Response::empty(200));
        let (_, last) = store.last_many(&["u1".into()], None).unwrap().remove(0);
        assert_eq!(last.ping.status, "a");
        assert!(last.ping.time.abs_diff(ping::now_micros() / 1_000_000) <= 2);
    }

    #[test]
    fn bad_pings_are_refused_and_not_stored() {
        let (routes, store) = routes();
        let cases = [
            (None, r#"{"status":"1"}"#, 400),
            (Some("nope"), r#"{"status":"1"}"#, 400),
            (Some(CLAIM), "", 400),
            (Some(CLAIM), r#"{"status":1}"#, 400),
            (
                Some(CLAIM),
                &format!(r#"{{"status":"{}"}}"#, "x".repeat(1025)),
                413,
            ),
        ];
        for (claim, body, status) in cases {
            let response = respond(&routes, request("POST", "/ping", claim, body));
            assert_eq!(response.status, status, "{claim:?} {body}");
            assert_eq!(response.body.lines().count(), 1);
        }
        assert!(store.last_many(&["u1".into()], None).unwrap().is_empty());
    }

    #[test]
    fn both_subscribe_forms_decode_their_ids_and_ignore_the_query() {
        assert_eq!(
            subscribe("/subscribe/u%201/client/dev%2Fice?token=jwt"),
            Outcome::Subscribe(Subscribe {
                users: vec!["u 1".into()],
                form: Form::Single,
                client: Some("dev/ice".into()),
                after: 0,
                headers: vec![],
                slot: None,
                unchecked_for: None,
            })
        );
        assert_eq!(
            subscribe("/subscribe/%C3%A9?token=jwt"),
            Outcome::Subscribe(Subscribe {
                users: vec!["é".into()],
                form: Form::Single,
                client: None,
                after: 0,
                headers: vec![],
                slot: None,
                unchecked_for: None,
            })
        );
    }

    #[test]
    fn the_multi_user_form_reads_its_users_from_the_query() {
        assert_eq!(
            subscribe("/subscribe?user=a+b&token=jwt&user=c%2Fd&user=a+b"),
            Outcome::Subscribe(Subscribe {
                users: vec!["a b".into(), "c/d".into()],
                form: Form::Multi,
                client: None,
                after: 0,
                headers: vec![],
                slot: None,
                unchecked_for: None,
            })
        );
        for (target, code) in [
            ("/subscribe", 400),
            ("/subscribe?token=x", 400),
            ("/subscribe?user=", 400),
            ("/status", 400),
            ("/status?user=a&user=", 400),
        ] {
            let Outcome::Respond(response) = subscribe(target) else {
                panic!("{target} matched");
            };
            assert_eq!(response.status, code, "{target}");
        }
    }

    #[test]
    fn last_event_id_sets_where_a_stream_resumes_and_must_be_a_number() {
        let (routes, _) = routes();
        let mut request = request("GET", "/subscribe?user=a", None, "");
        request
            .headers
            .push(("Last-Event-ID".into(), b"1700000000000001".to_vec()));
        let Outcome::Subscribe(subscribe) = routes.handle(&request, None) else {
            panic!("a stream");
        };
        assert_eq!(subscribe.after, 1_700_000_000_000_001);
        request.headers.last_mut().unwrap().1 = b"".to_vec();
        assert!(matches!(routes.handle(&request, None), Outcome::Subscribe(s) if s.after == 0));
        request.target = "/subscribe/a".into();
        request.headers.last_mut().unwrap().1 = b"abc".to_vec();
        let Outcome::Respond(refused) = routes.handle(&request, None) else {
            panic!("refused");
        };
        assert_eq!(refused.status, 400);
    }

    #[test]
    fn status_maps_each_user_to_its_last_ping_or_null() {
        let (routes, store) = routes();
        store
            .record("a", "d", Some("1"), 1_700_000_000_000_000)
            .unwrap();
        let now = ping::now_micros();
        store.record("now", "d", Some("2"), now).unwrap();
        let target = "/status?user=a&user=b+c&user=now";
        let response = respond(&routes, request("GET", target, None, ""));
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "a": { "time": 1_700_000_000, "status": "1", "online": false },
                "b c": null,
                "now": { "time": now / 1_000_000, "status": "2", "online": true },
            })
        );
        let post = respond(&routes, request("POST", "/status?user=a", None, ""));
        assert_eq!(post.status, 405);
    }

    #[test]
    fn unknown_paths_get_404_and_bad_ids_a_reason() {
        for target in [
            "/",
            "/pings",
            "/subscribe/",
            "/subscribe//client/c",
            "/subscribe/u/client/",
            "/subscribe/u/device/c",
            "/subscribe/u/client/c/x",
        ] {
            let Outcome::Respond(response) = subscribe(target) else {
                panic!("{target} matched");
            };
            assert_eq!(response.status, 404, "{target}");
        }
        let status = |target: &str| match subscribe(target) {
            Outcome::Respond(r) | Outcome::Pinged(r, _) => r.status,
            Outcome::Subscribe(_) => 200,
        };
        assert_eq!(status("/subscribe/%zz"), 400);
        assert_eq!(status("/subscribe/%4"), 400);
        assert_eq!(status("/subscribe/%ff"), 400);
        assert_eq!(status(&format!("/subscribe/{}", "u".repeat(256))), 200);
        assert_eq!(status(&format!("/subscribe/{}", "u".repeat(257))), 413);
        assert_eq!(
            status(&format!("/subscribe/u/client/{}", "c".repeat(257))),
            413
        );
    }

    #[test]
    fn known_paths_with_another_method_get_405_with_allow() {
        let (routes, _) = routes();
        let response = respond(&routes, request("GET", "/ping", None, ""));
        assert_eq!(response.status, 405);
        assert_eq!(response.headers, [("Allow", "POST".to_owned())]);
        let response = respond(&routes, request("POST", "/subscribe/u", None, ""));
        assert_eq!(response.status, 405);
        assert_eq!(response.headers, [("Allow", "GET".to_owned())]);
    }

    #[test]
    fn health_and_metrics_answer_get() {
        let (routes, _) = routes();
        let health = respond(&routes, request("GET", "/healthz", None, ""));
        assert_eq!(health.status, 200);
        assert_eq!(health.body, "{\"status\":\"ok\",\"store\":\"memory\"}\n");
        respond(
            &routes,
            request("POST", "/ping", Some(CLAIM), r#"{"status":"1"}"#),
        );
        respond(&routes, request("POST", "/ping", Some(CLAIM), "{}"));
        let metrics = respond(&routes, request("GET", "/metrics", None, ""));
        assert_eq!(metrics.status, 200);
        assert!(metrics.body.contains("heartbeat_pings_accepted_total 1\n"));
        assert!(
            metrics
                .body
                .contains("heartbeat_pings_refused_total{reason=\"invalid\"} 1\n")
        );
        let post = respond(&routes, request("POST", "/metrics", None, ""));
        assert_eq!((post.status, post.headers[0].1.as_str()), (405, "GET"));
    }

    fn with_origin(mut request: Request, origin: &str) -> Request {
        request
            .headers
            .push(("Origin".into(), origin.as_bytes().to_vec()));
        request
    }

    #[test]
    fn cors_headers_follow_the_configured_origins() {
        let app = "https://app.example";
        let (routes, _) = routes_with(Cors::Origins(vec![app.into()]));
        let ping = request("POST", "/ping", Some(CLAIM), r#"{"status":"1"}"#);
        let response = respond(&routes, with_origin(ping.clone(), app));
        assert!(
            response
                .headers
                .contains(&("Access-Control-Allow-Origin", app.into()))
        );
        assert!(response.headers.contains(&("Vary", "Origin".into())));
        let other = respond(&routes, with_origin(ping, "https://evil.example"));
        assert!(
            other
                .headers
                .iter()
                .all(|(n, _)| *n != "Access-Control-Allow-Origin")
        );

        let preflight = respond(
            &routes,
            with_origin(request("OPTIONS", "/ping", None, ""), app),
        );
        assert_eq!(preflight.status, 204);
        assert!(
            preflight
                .headers
                .iter()
                .any(|(n, v)| *n == "Access-Control-Allow-Headers" && v.contains("X-User-Claim"))
        );
        let refused = respond(
            &routes,
            with_origin(request("OPTIONS", "/ping", None, ""), "https://x"),
        );
        assert_eq!(refused.status, 403);

        let Outcome::Subscribe(subscribe) = routes.handle(
            &with_origin(request("GET", "/subscribe/u", None, ""), app),
            None,
        ) else {
            panic!("a stream");
        };
        assert!(
            subscribe
                .headers
                .contains(&("Access-Control-Allow-Origin", app.into()))
        );

        for target in ["/subscribe?user=a&user=b", "/status?user=a"] {
            let preflight = respond(
                &routes,
                with_origin(request("OPTIONS", target, None, ""), app),
            );
            assert_eq!(preflight.status, 204, "{target}");
            assert!(
                preflight
                    .headers
                    .contains(&("Access-Control-Allow-Headers", "Last-Event-ID".into())),
                "{target}"
            );
        }
        let status = respond(
            &routes,
            with_origin(request("GET", "/status?user=a", None, ""), app),
        );
        assert!(
            status
                .headers
                .contains(&("Access-Control-Allow-Origin", app.into()))
        );

        let (any, _) = routes_with(Cors::Any);
        let response = respond(&any, request("POST", "/ping", Some(CLAIM), "{}"));
        assert!(
            response
                .headers
                .contains(&("Access-Control-Allow-Origin", "*".into()))
        );
        let (off, _) = routes_with(Cors::Off);
        let options = respond(
            &off,
            with_origin(request("OPTIONS", "/ping", None, ""), app),
        );
        assert_eq!(options.status, 405);
    }
}
