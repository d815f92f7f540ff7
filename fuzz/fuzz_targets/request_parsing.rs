//! What a request carries, parsed: the claim, the ping body, path segments, `?user=` lists,
//! and whole requests routed (in memory). Nothing may panic; every refusal is a 4xx with a
//! one-line reason; every parsed id is within the limits.
#![no_main]

use std::sync::{Arc, OnceLock};

use heartbeat::config::{Cors, Limits, TrustedProxies, WatchPolicy};
use heartbeat::flood::{PingRate, WatcherStreams};
use heartbeat::http::Request;
use heartbeat::hub::Hub;
use heartbeat::presence::Rules;
use heartbeat::routes::{Outcome, Routes, StreamCounts};
use heartbeat::store::memory::MemoryStore;
use heartbeat::{ids, ping};
use libfuzzer_sys::fuzz_target;

/// No streams: the fuzzed routes only turn a subscribe into a [`Subscribe`](heartbeat::stream::Subscribe).
struct NoStreams;

impl StreamCounts for NoStreams {
    fn open(&self) -> usize {
        0
    }
    fn dropped_slow(&self) -> u64 {
        0
    }
}

/// Routes on the in-memory store; they start no thread.
fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| Routes {
        store: Arc::new(MemoryStore::new(Hub::new(8), Rules::default())),
        streams: Arc::new(NoStreams),
        metrics: Arc::default(),
        limits: small_limits(),
        cors: Cors::Any,
        trusted: TrustedProxies::default(),
        // Watchers claimed, and small limits, so that 401s and 429s are fuzzed too.
        policy: WatchPolicy::Claimed,
        ping_rate: Some(PingRate::new(3)),
        watcher_streams: WatcherStreams::new(2),
        contacts: None,
    })
}

fn small_limits() -> Limits {
    Limits {
        max_id_bytes: 16,
        max_status_bytes: 32,
        max_users_per_stream: 4,
        ..Limits::default()
    }
}

fn one_line_4xx(status: u16, body: &str) {
    assert!((400..500).contains(&status), "{status}");
    let reason = body.strip_suffix('\n').expect("a line");
    assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
}

fuzz_target!(|data: &[u8]| {
    let limits = small_limits();
    // The input split in four by 0xff bytes: claim, body, target, another header's value.
    let mut parts = data.splitn(4, |&b| b == 0xff);
    let claim = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let other = parts.next().unwrap_or_default();

    match ping::parse_claim(Some(claim), &limits) {
        Ok(claim) => {
            assert!(!claim.userid.is_empty() && claim.userid.len() <= limits.max_id_bytes);
        }
        Err(r) => one_line_4xx(r.status_code(), &format!("{r}\n")),
    }
    match ping::parse_status(body, &limits) {
        Ok(status) => assert!(status.len() <= limits.max_status_bytes),
        Err(r) => one_line_4xx(r.status_code(), &format!("{r}\n")),
    }
    match ids::users_of_query(&target, &limits) {
        Ok(users) => {
            assert!((1..=limits.max_users_per_stream).contains(&users.len()));
            assert!(
                users
                    .iter()
                    .all(|u| !u.is_empty() && u.len() <= limits.max_id_bytes)
            );
        }
        Err(r) => one_line_4xx(r.status_code(), &format!("{r}\n")),
    }
    if let Err(r) = ids::path_segment(&target) {
        one_line_4xx(r.status_code(), &format!("{r}\n"));
    }

    for method in ["GET", "POST", "OPTIONS"] {
        let request = Request {
            method: method.into(),
            target: target.clone(),
            minor_version: 1,
            headers: vec![
                ("X-User-Claim".into(), claim.to_vec()),
                ("Last-Event-ID".into(), other.to_vec()),
                ("Origin".into(), other.to_vec()),
            ],
            body: body.to_vec(),
        };
        match routes().handle(&request, None) {
            Outcome::Respond(response) | Outcome::Pinged(response, _) if response.status >= 400 => {
                one_line_4xx(response.status, &response.body)
            }
            Outcome::Respond(_) | Outcome::Pinged(..) => {}
            Outcome::Subscribe(subscribe) => {
                assert!((1..=limits.max_users_per_stream).contains(&subscribe.users.len()));
            }
        }
    }
});
