//! The API: which request does what. Answers pings, and turns a subscribe request into a
//! [`Subscribe`] for the connection to stream. Knows nothing of sockets.

use std::sync::Arc;

use crate::config::Limits;
use crate::http::{Request, Response};
use crate::ping::{self, Rejection};
use crate::store::Store;

/// What the connection should do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Respond(Response),
    /// Answer with an event stream of `user`'s pings.
    Subscribe(Subscribe),
}

/// A request to watch a user.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub user: String,
    /// The watching device, for logs.
    pub client: Option<String>,
}

/// The routes with what they need: the store and the limits.
pub struct Routes {
    store: Arc<dyn Store>,
    limits: Limits,
}

impl Routes {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Routes {
        Routes { store, limits }
    }

    pub fn handle(&self, request: &Request) -> Outcome {
        let method = request.method.as_str();
        match route(request.path(), &self.limits) {
            Ok(Route::Ping) if method == "POST" => Outcome::Respond(self.ping(request)),
            Ok(Route::Ping) => Outcome::Respond(not_allowed("POST")),
            Ok(Route::Subscribe(subscribe)) if method == "GET" => Outcome::Subscribe(subscribe),
            Ok(Route::Subscribe(_)) => Outcome::Respond(not_allowed("GET")),
            Err(response) => Outcome::Respond(response),
        }
    }

    fn ping(&self, request: &Request) -> Response {
        let parsed = ping::parse_claim(request.header("x-user-claim"), &self.limits)
            .and_then(|claim| Ok((claim, ping::parse_status(&request.body, &self.limits)?)));
        let (claim, status) = match parsed {
            Ok(parsed) => parsed,
            Err(rejection) => {
                log::debug!("ping refused: {rejection}");
                return refuse(&rejection);
            }
        };
        match self
            .store
            .record(&claim.userid, &status, ping::now_micros())
        {
            Ok(stored) => {
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
                Response::text(503, &e.to_string())
            }
        }
    }
}

enum Route {
    Ping,
    Subscribe(Subscribe),
}

/// Matches a path: `/ping`, `/subscribe/:userid` and `/subscribe/:userid/client/:clientid`,
/// with percent-decoded segments.
fn route(path: &str, limits: &Limits) -> Result<Route, Response> {
    if path == "/ping" {
        return Ok(Route::Ping);
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
    Ok(Route::Subscribe(Subscribe { user, client }))
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
    use crate::store::MemoryStore;

    fn routes() -> (Routes, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new(Hub::new(4)));
        (
            Routes::new(Arc::clone(&store) as Arc<dyn Store>, Limits::default()),
            store,
        )
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
        let last = store.last("u1").unwrap().unwrap();
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
        assert_eq!(store.last("u1").unwrap(), None);
    }

    #[test]
    fn both_subscribe_forms_decode_their_ids_and_ignore_the_query() {
        assert_eq!(
            subscribe("/subscribe/u%201/client/dev%2Fice?token=jwt"),
            Outcome::Subscribe(Subscribe {
                user: "u 1".into(),
                client: Some("dev/ice".into())
            })
        );
        assert_eq!(
            subscribe("/subscribe/%C3%A9?token=jwt"),
            Outcome::Subscribe(Subscribe {
                user: "é".into(),
                client: None
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
}
