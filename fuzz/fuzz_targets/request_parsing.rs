//! What a request carries, parsed: the claim, the ping body, path segments, `?user=` lists,
//! and whole requests routed (in memory). Nothing may panic; every refusal is a 4xx with a
//! one-line reason; every parsed id is within the limits.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use heartbeat::config::{Cors, Limits, TrustedProxies};
use heartbeat::hangup::Hangups;
use heartbeat::http::Request;
use heartbeat::hub::Hub;
use heartbeat::routes::{Outcome, Routes};
use heartbeat::store::cached::CachedReads;
use heartbeat::store::memory::MemoryStore;
use heartbeat::stream::{Streams, Writing};
use heartbeat::{ids, ping};
use libfuzzer_sys::fuzz_target;

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let hub = Hub::new(8);
        let store = Arc::new(MemoryStore::new(Arc::clone(&hub)));
        let (cached, _) = CachedReads::start(store.clone(), Arc::clone(&hub)).unwrap();
        let (hangups, _) = Hangups::start().unwrap();
        let writing = Writing {
            keepalive: Duration::from_secs(25),
            max_stream: None,
            timeout: Duration::from_secs(1),
            send_buffer: 65536,
        };
        let metrics = Arc::default();
        let streams = Streams::new(hub, cached, hangups, writing, Arc::clone(&metrics));
        Routes {
            store,
            streams: Arc::new(streams),
            metrics,
            limits: small_limits(),
            cors: Cors::Any,
            trusted: TrustedProxies::default(),
        }
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
            Outcome::Respond(response) if response.status >= 400 => {
                one_line_4xx(response.status, &response.body)
            }
            Outcome::Respond(_) => {}
            Outcome::Subscribe(subscribe) => {
                assert!((1..=limits.max_users_per_stream).contains(&subscribe.users.len()));
            }
        }
    }
});
