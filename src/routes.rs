//! The API: which request does what. Answers pings, health and metrics, and turns a subscribe
//! request into a [`Subscribe`] for the connection to stream. Knows nothing of sockets.

use std::sync::Arc;

use crate::config::{Cors, Limits};
use crate::http::{Request, Response};
use crate::metrics::{Metrics, Readings};
use crate::ping::{self, Rejection};
use crate::store::Store;
use crate::stream::{Streams, Subscribe};

/// What the connection should do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Respond(Response),
    /// Answer with an event stream of `user`'s pings.
    Subscribe(Subscribe),
}

/// The routes with what they need.
pub struct Routes {
    pub store: Arc<dyn Store>,
    /// Read for `/metrics`; the connection serves the streams.
    pub streams: Arc<Streams>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub cors: Cors,
}

impl Routes {
    pub fn handle(&self, request: &Request) -> Outcome {
        let method = request.method.as_str();
        let route = route(request.path(), &self.limits);
        let cors = matches!(route, Ok(Route::Ping | Route::Subscribe(_)))
            .then(|| self.cors.allow(request.header("origin")))
            .flatten();
        let mut outcome = match route {
            Ok(Route::Ping) if method == "POST" => Outcome::Respond(self.ping(request)),
            Ok(Route::Ping) if method == "OPTIONS" && self.cors != Cors::Off => {
                Outcome::Respond(preflight(cors.is_some()))
            }
            Ok(Route::Ping) => Outcome::Respond(not_allowed("POST")),
            Ok(Route::Subscribe(subscribe)) if method == "GET" => Outcome::Subscribe(subscribe),
            Ok(Route::Subscribe(_)) => Outcome::Respond(not_allowed("GET")),
            Ok(Route::Health) if method == "GET" => Outcome::Respond(self.health()),
            Ok(Route::Metrics) if method == "GET" => Outcome::Respond(self.metrics()),
            Ok(Route::Health | Route::Metrics) => Outcome::Respond(not_allowed("GET")),
            Err(response) => Outcome::Respond(response),
        };
        if let Some(origin) = cors {
            let headers = match &mut outcome {
                Outcome::Respond(response) => &mut response.headers,
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
        let (status, body) = match self.store.health() {
            Ok(()) => (200, serde_json::json!({ "status": "ok", "store": store })),
            Err(reason) => (
                503,
                serde_json::json!({
                    "status": "unavailable",
                    "store": store,
                    "reason": reason.to_string()
                }),
            ),
        };
        Response::text(status, &body.to_string())
            .with_header("Content-Type", "application/json")
            .with_header("Cache-Control", "no-store")
    }

    fn metrics(&self) -> Response {
        let readings = Readings {
            streams: self.streams.open(),
            subscribers_dropped_slow: self.streams.dropped_slow(),
            feed_up: self.store.feed_up(),
        };
        Response::text(200, self.metrics.render(&readings).trim_end())
            .with_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
    }

    fn ping(&self, request: &Request) -> Response {
        let parsed = ping::parse_claim(request.header("x-user-claim"), &self.limits)
            .and_then(|claim| Ok((claim, ping::parse_status(&request.body, &self.limits)?)));
        let (claim, status) = match parsed {
            Ok(parsed) => parsed,
            Err(rejection) => {
                log::debug!("ping refused: {rejection}");
                self.metrics.count_refused(&rejection);
                return refuse(&rejection);
            }
        };
        match self
            .store
            .record(&claim.userid, &status, ping::now_micros())
        {
            Ok(stored) => {
                Metrics::count(&self.metrics.pings_accepted_total);
                log::debug!(
                    "ping from {:?} ({}): status {:?}, seq {}",
                    claim.userid,
                    claim.clientid.as_deref().unwrap_or("-"),
                    stored.status,
                    stored.seq
                );
                Response::empty(200)
            }
            Err(e) => {
                log::debug!("ping from {:?} not stored: {e}", claim.userid);
                Metrics::count(&self.metrics.pings_refused_unavailable_total);
                Response::text(503, &e.to_string())
            }
        }
    }
}

enum Route {
    Ping,
    Subscribe(Subscribe),
    Health,
    Metrics,
}

/// Matches a path: `/ping`, `/subscribe/:userid` and `/subscribe/:userid/client/:clientid`
/// (segments percent-decoded), `/healthz` and `/metrics`.
fn route(path: &str, limits: &Limits) -> Result<Route, Response> {
    match path {
        "/ping" => return Ok(Route::Ping),
        "/healthz" => return Ok(Route::Health),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/subscribe/") else {
        return Err(not_found());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (user, client) = match segments[..] {
        [user] => (user, None),
        [user, "client", client] if !client.is_empty() => (user, Some(client)),
        _ => return Err(not_found()),
    };
    if user.is_empty() {
        return Err(not_found());
    }
    let user = percent_decode(user)?;
    ping::check_id("userid", &user, limits).map_err(|r| refuse(&r))?;
    let client = match client {
        Some(client) => {
            let client = percent_decode(client)?;
            ping::check_id("clientid", &client, limits).map_err(|r| refuse(&r))?;
            Some(client)
        }
        None => None,
    };
    Ok(Route::Subscribe(Subscribe {
        user,
        client,
        headers: Vec::new(),
    }))
}

/// The answer to a CORS preflight of `/ping`.
fn preflight(allowed: bool) -> Response {
    if !allowed {
        return Response::text(403, "origin not allowed");
    }
    Response::empty(204)
        .with_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        .with_header("Access-Control-Allow-Headers", "Content-Type, X-User-Claim")
        .with_header("Access-Control-Max-Age", "600")
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(segment: &str) -> Result<String, Response> {
    let bad = || Response::text(400, "invalid percent-encoding in path");
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Response::text(400, "path is not UTF-8 once decoded"))
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
    use crate::store::cached::CachedReads;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn routes_with(cors: Cors) -> (Routes, Arc<MemoryStore>) {
        let hub = Hub::new(4);
        let store = Arc::new(MemoryStore::new(Arc::clone(&hub)));
        let (cached, _) = CachedReads::start(store.clone(), Arc::clone(&hub)).unwrap();
        let metrics = Arc::new(Metrics::default());
        let streams = Streams::new(hub, cached, Duration::from_secs(25), Arc::clone(&metrics));
        let routes = Routes {
            store: Arc::clone(&store) as Arc<dyn Store>,
            streams: Arc::new(streams),
            metrics,
            limits: Limits::default(),
            cors,
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
        match routes.handle(&request) {
            Outcome::Respond(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn subscribe(target: &str) -> Outcome {
        routes().0.handle(&request("GET", target, None, ""))
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
        let (_, last) = store.last_many(&["u1".into()]).unwrap().remove(0);
        assert_eq!(last.status, "a");
        assert!(last.time.abs_diff(ping::now_micros() / 1_000_000) <= 2);
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
        assert!(store.last_many(&["u1".into()]).unwrap().is_empty());
    }

    #[test]
    fn both_subscribe_forms_decode_their_ids_and_ignore_the_query() {
        assert_eq!(
            subscribe("/subscribe/u%201/client/dev%2Fice?token=jwt"),
            Outcome::Subscribe(Subscribe {
                user: "u 1".into(),
                client: Some("dev/ice".into()),
                headers: vec![]
            })
        );
        assert_eq!(
            subscribe("/subscribe/%C3%A9?token=jwt"),
            Outcome::Subscribe(Subscribe {
                user: "é".into(),
                client: None,
                headers: vec![]
            })
        );
    }

    #[test]
    fn unknown_paths_get_404_and_bad_ids_a_reason() {
        for target in [
            "/",
            "/pings",
            "/subscribe",
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
            Outcome::Respond(r) => r.status,
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

        let Outcome::Subscribe(subscribe) =
            routes.handle(&with_origin(request("GET", "/subscribe/u", None, ""), app))
        else {
            panic!("a stream");
        };
        assert!(
            subscribe
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
