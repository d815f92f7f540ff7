//! Many users on one stream (`GET /subscribe?user=...`), event ids with `Last-Event-ID`, and
//! `GET /status`, against a real Redis and the real binary.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{Heartbeat, Redis, SOON, heartbeat_on_redis};

/// `?user=a&user=b...` with each id encoded as `URLSearchParams` does.
fn query(users: &[&str]) -> String {
    let encode = |id: &str| {
        id.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let pairs: Vec<String> = users
        .iter()
        .map(|u| format!("user={}", encode(u)))
        .collect();
    format!("?{}", pairs.join("&"))
}

/// A user id unique to this test run.
fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[test]
fn one_stream_gets_each_users_cached_ping_then_live_ones_from_another_instance() {
    let redis = Redis::start();
    let pinger = Heartbeat::start(&redis.addr());
    let watcher = Heartbeat::start(&redis.addr());
    let (a, b, c, z) = (id("a"), id("b"), id("c"), id("z"));
    pinger.ping(&a, "1").assert_ok();
    pinger.ping(&b, "2").assert_ok();

    let mut stream = watcher.subscribe(&format!("/subscribe{}", query(&[&a, &b, &c])));
    assert_eq!(stream.head.status, 200);
    assert_eq!(
        stream.head.header("content-type"),
        Some("text/event-stream")
    );
    let mut cached = HashMap::new();
    for _ in 0..2 {
        let (id, (user, _, status)) = stream.expect_user_ping(SOON);
        cached.insert(user, (id, status));
    }
    assert_eq!(cached[&a].1, "1");
    assert_eq!(cached[&b].1, "2");
    assert!(
        cached[&b].0 > cached[&a].0,
        "b was stored later: {cached:?}"
    );

    pinger.ping(&z, "9").assert_ok(); // not watched
    pinger.ping(&c, "4").assert_ok();
    pinger.ping(&a, "0").assert_ok();
    let (id_c, (user, time, status)) = stream.expect_user_ping(SOON);
    assert_eq!((user.as_str(), status.as_str()), (c.as_str(), "4"));
    assert!(time.abs_diff(support::now_secs()) <= 2);
    let (id_a, (user, _, status)) = stream.expect_user_ping(SOON);
    assert_eq!((user.as_str(), status.as_str()), (a.as_str(), "0"));
    assert!(
        id_a > id_c && id_c > cached[&b].0,
        "ids increase in storing order"
    );
    stream.expect_no_data(Duration::from_millis(300));
}

#[test]
fn odd_ids_are_decoded_as_a_form_encodes_them() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let odd = [
        id("plus+sign"),
        id("slash/ed"),
        id("é-ü"),
        id("and&amp"),
        id("with space"),
    ];
    let odd: Vec<&str> = odd.iter().map(String::as_str).collect();
    let mut stream = heartbeat.subscribe(&format!("/subscribe{}", query(&odd)));
    assert_eq!(stream.head.status, 200);
    for user in &odd {
        let claim = serde_json::json!({ "userid": user, "clientid": "t" }).to_string();
        heartbeat
            .post_ping(Some(&claim), r#"{"status":"x"}"#)
            .assert_ok();
        let (_, (got, _, _)) = stream.expect_user_ping(SOON);
        assert_eq!(got, *user);
    }
}

#[test]
fn repeated_ids_count_once_and_bad_lists_are_refused_with_a_reason() {
    let heartbeat = Heartbeat::start("memory");
    let a = id("a");
    heartbeat.ping(&a, "1").assert_ok();
    let mut stream = heartbeat.subscribe(&format!("/subscribe{}", query(&[&a, &a, &a])));
    let (_, (user, _, _)) = stream.expect_user_ping(SOON);
    assert_eq!(user, a);
    stream.expect_no_data(Duration::from_millis(300));

    let reason = heartbeat
        .get("/subscribe?token=jwt")
        .assert_refused(400)
        .to_owned();
    assert!(reason.contains("256"), "the limit is named: {reason}");
    heartbeat.get("/subscribe?user=a&user=").assert_refused(400);
    heartbeat.get("/subscribe?user=%zz").assert_refused(400);
    let too_many: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let reason = heartbeat
        .get(&format!("/subscribe{}", query(&too_many)))
        .assert_refused(400)
        .to_owned();
    assert!(reason.contains("256"), "the limit is named: {reason}");
    let long = "u".repeat(257);
    heartbeat
        .get(&format!("/subscribe?user={long}"))
        .assert_refused(413);
    heartbeat
        .get(&format!("/status?user={long}"))
        .assert_refused(413);

    // 256 ids of 24 bytes fit in the default head limit.
    let full: Vec<String> = (0..256).map(|i| format!("{:0>24}", i)).collect();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    assert_eq!(
        heartbeat
            .subscribe(&format!("/subscribe{}", query(&full)))
            .head
            .status,
        200
    );
}

#[test]
fn last_event_id_resumes_both_stream_forms_without_repeats_or_gaps() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let (a, b) = (id("a"), id("b"));
    heartbeat.ping(&a, "1").assert_ok();
    let mut first = heartbeat.subscribe(&format!("/subscribe{}", query(&[&a, &b])));
    let (seen, _) = first.expect_user_ping(SOON);
    drop(first);

    // b pinged while the page was away; a's cached ping was seen already.
    heartbeat.ping(&b, "2").assert_ok();
    let mut resumed = heartbeat.resume(&format!("/subscribe{}", query(&[&a, &b])), seen);
    let (id_b, (user, _, status)) = resumed.expect_user_ping(SOON);
    assert_eq!((user.as_str(), status.as_str()), (b.as_str(), "2"));
    resumed.expect_no_data(Duration::from_millis(300));
    heartbeat.ping(&a, "4").assert_ok();
    let (id_a, (user, _, _)) = resumed.expect_user_ping(SOON);
    assert_eq!(user, a);
    assert!(id_a > id_b);

    // The single-user form: its cached ping is not above the id, so only the next comes.
    let mut single = heartbeat.resume(&format!("/subscribe/{a}/client/t"), id_a);
    assert_eq!(single.head.status, 200);
    single.expect_no_data(Duration::from_millis(300));
    heartbeat.ping(&a, "4").assert_ok();
    let (_, status) = single.expect_ping(SOON);
    assert_eq!(status, "4");
    assert!(single.id() > id_a);

    heartbeat
        .request(
            format!(
                "GET /subscribe/{a} HTTP/1.1\r\nLast-Event-ID: yesterday\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .assert_refused(400);
}

#[test]
fn status_answers_every_listed_user_and_503_fast_when_redis_is_down() {
    let (mut redis, heartbeat) = heartbeat_on_redis();
    let (a, b) = (id("a"), id("b c"));
    heartbeat.ping(&a, "busy").assert_ok();
    let reply = heartbeat.get(&format!("/status{}", query(&[&a, &b, &a])));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 2);
    assert_eq!(object[&a]["status"], "busy");
    assert!(
        object[&a]["time"]
            .as_u64()
            .unwrap()
            .abs_diff(support::now_secs())
            <= 2
    );
    assert_eq!(object[&b], serde_json::Value::Null);
    heartbeat.get("/status").assert_refused(400);

    redis.kill();
    let started = Instant::now();
    heartbeat
        .get(&format!("/status{}", query(&[&a])))
        .assert_refused(503);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn memory_mode_serves_many_users_per_stream_and_status() {
    let heartbeat = Heartbeat::start("memory");
    let (a, b) = (id("a"), id("b"));
    heartbeat.ping(&a, "1").assert_ok();
    let mut stream = heartbeat.subscribe(&format!("/subscribe{}", query(&[&a, &b])));
    let (first, (user, _, _)) = stream.expect_user_ping(SOON);
    assert_eq!(user, a);
    heartbeat.ping(&b, "2").assert_ok();
    let (second, (user, _, _)) = stream.expect_user_ping(SOON);
    assert_eq!(user, b);
    assert!(second > first);
    let reply = heartbeat.get(&format!("/status{}", query(&[&a, &b])));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body[&b]["status"], "2");
}
