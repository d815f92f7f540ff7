//! SPEC's API, line by line, against the real binary and a real Redis.

mod support;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use support::{AT_ONCE, Heartbeat, Redis, Reply, SOON, Sse, SseItem, heartbeat_on_redis, now_secs};

#[test]
fn a_ping_is_answered_200_with_an_empty_body_and_stored_in_redis() {
    let (redis, heartbeat) = heartbeat_on_redis();
    let reply = heartbeat.ping("alice", "1");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "");
    assert_eq!(reply.header("content-length"), Some("0"));

    // The presence, "<seq> <time> <expires> <status>", and the device, "<at> <status>".
    let key = format!("{}last:alice", support::key_prefix());
    let (presence, device): (String, String) =
        redis.query(redis::cmd("HMGET").arg(&key).arg(&["p", "d:test"]));
    let fields: Vec<&str> = presence.splitn(4, ' ').collect();
    let [seq, time, expires, status] = fields[..] else {
        panic!("{presence:?}");
    };
    let (seq, time, expires): (u64, u64, u64) = (
        seq.parse().unwrap(),
        time.parse().unwrap(),
        expires.parse().unwrap(),
    );
    assert!(seq > 0);
    assert!(time.abs_diff(now_secs()) <= 2, "time {time} is now");
    assert_eq!(
        expires,
        seq + 60_000_000,
        "live for DEVICE_TTL_SECS after the ping"
    );
    assert_eq!(status, "1");
    assert_eq!(device, format!("{seq} 1"));
}

#[test]
fn a_hash_written_before_presence_is_read_and_rewritten_by_the_next_ping() {
    let (redis, heartbeat) = heartbeat_on_redis();
    let key = format!("{}last:olga", support::key_prefix());
    let seq = support::now_secs() * 1_000_000;
    let _: () = redis.query(redis::cmd("HSET").arg(&key).arg(&[
        "seq",
        &seq.to_string(),
        "time",
        &now_secs().to_string(),
        "status",
        "2",
    ]));
    let status = heartbeat.get("/status?user=olga");
    let body: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(body["olga"]["status"], "2");
    assert_eq!(body["olga"]["online"], true);
    let mut sse = heartbeat.subscribe("/subscribe/olga");
    assert_eq!(sse.expect_ping(SOON).1, "2");
    heartbeat.ping("olga", "0").assert_ok();
    assert_eq!(sse.expect_ping(SOON).1, "0");
    assert!(sse.id() > seq);
    let mut fields: Vec<String> = redis.query(redis::cmd("HKEYS").arg(&key));
    fields.sort();
    assert_eq!(fields, ["d:test", "p"], "the old fields are gone");
}

#[test]
fn a_subscriber_gets_the_cached_ping_at_once_then_live_ones_with_integer_times() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    assert_eq!(heartbeat.ping("bob", "a").status, 200);

    let started = Instant::now();
    let mut sse = heartbeat.subscribe("/subscribe/bob/client/phone");
    assert_eq!(sse.head.status, 200);
    assert_eq!(sse.head.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.head.header("x-accel-buffering"), Some("no"));
    assert_eq!(sse.head.header("transfer-encoding"), Some("chunked"));
    let (time, status) = sse.expect_ping(AT_ONCE);
    assert!(started.elapsed() < AT_ONCE);
    assert_eq!(status, "a");
    assert!(time.abs_diff(now_secs()) <= 2);

    // Every visible status ("3", invisible by default, is the presence tests' own).
    for status in ["0", "2", "1"] {
        assert_eq!(heartbeat.ping("bob", status).status, 200);
        assert_eq!(sse.expect_ping(SOON).1, status);
    }
}

#[test]
fn the_stream_head_arrives_before_any_ping_exists() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let mut sse = heartbeat.subscribe("/subscribe/nobody-yet");
    assert_eq!(sse.head.status, 200);
    sse.expect_no_data(Duration::from_millis(300));
    heartbeat.ping("nobody-yet", "1");
    assert_eq!(sse.expect_ping(SOON).1, "1");
}

#[test]
fn the_short_route_with_a_token_query_and_encoded_ids_is_the_same_stream() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let user = "user 1/é";
    heartbeat.ping(user, "cached");
    let mut short = heartbeat.subscribe("/subscribe/user%201%2F%C3%A9?token=eyJhbGciOi.x.y");
    let mut long = heartbeat.subscribe("/subscribe/user%201%2F%C3%A9/client/dev%201");
    assert_eq!(short.expect_ping(AT_ONCE).1, "cached");
    assert_eq!(long.expect_ping(AT_ONCE).1, "cached");
    heartbeat.ping(user, "live");
    assert_eq!(short.expect_ping(SOON).1, "live");
    assert_eq!(long.expect_ping(SOON).1, "live");
}

#[test]
fn live_pings_reach_every_subscriber_of_the_user_and_no_one_else() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let mut carols: Vec<Sse> = (0..3)
        .map(|i| heartbeat.subscribe(&format!("/subscribe/carol/client/c{i}")))
        .collect();
    let mut dave = heartbeat.subscribe("/subscribe/dave");
    for n in 0..5 {
        assert_eq!(heartbeat.ping("carol", &format!("s{n}")).status, 200);
    }
    for sse in &mut carols {
        let got: Vec<String> = (0..5).map(|_| sse.expect_ping(SOON).1).collect();
        assert_eq!(got, ["s0", "s1", "s2", "s3", "s4"], "every ping, in order");
    }
    dave.expect_no_data(Duration::from_millis(300));
}

#[test]
fn a_ping_at_one_instance_reaches_a_subscriber_of_another() {
    let redis = Redis::start();
    let a = Heartbeat::start(&redis.addr());
    // A URL with a host name: the name is resolved on a small connection-thread stack.
    let b = Heartbeat::start(&format!("redis://localhost:{}/0", redis.port));
    a.ping("erin", "cached");
    let mut at_b = b.subscribe("/subscribe/erin");
    assert_eq!(at_b.expect_ping(AT_ONCE).1, "cached", "the cache is shared");
    a.ping("erin", "from a");
    assert_eq!(at_b.expect_ping(SOON).1, "from a");
    let mut at_a = a.subscribe("/subscribe/erin");
    assert_eq!(at_a.expect_ping(AT_ONCE).1, "from a");
    b.ping("erin", "from b");
    assert_eq!(at_a.expect_ping(SOON).1, "from b");
    assert_eq!(at_b.expect_ping(SOON).1, "from b");
}

#[test]
fn instances_with_other_key_prefixes_do_not_hear_each_other() {
    let redis = Redis::start();
    // Prefixes of their own, outside the default user's rule: as admin.
    let a = Heartbeat::start_with(&[("REDIS", &redis.admin_url()), ("KEY_PREFIX", "one:")]);
    let b = Heartbeat::start_with(&[("REDIS", &redis.admin_url()), ("KEY_PREFIX", "two:")]);
    let mut at_b = b.subscribe("/subscribe/frank");
    a.ping("frank", "1");
    at_b.expect_no_data(Duration::from_millis(500));
    let mut keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    keys.sort();
    assert_eq!(keys, ["one:last:frank"]);
}

#[test]
fn memory_mode_serves_the_same_api_without_redis() {
    let heartbeat = Heartbeat::start("memory");
    heartbeat.ping("gina", "first");
    let mut sse = heartbeat.subscribe("/subscribe/gina/client/web");
    assert_eq!(sse.expect_ping(AT_ONCE).1, "first");
    heartbeat.ping("gina", "second");
    assert_eq!(sse.expect_ping(SOON).1, "second");
    heartbeat
        .post_ping(Some("{}"), r#"{"status":"1"}"#)
        .assert_refused(400);
}

#[test]
fn bad_pings_get_a_4xx_with_a_one_line_reason_and_store_nothing() {
    let (redis, heartbeat) = heartbeat_on_redis();
    let claim = r#"{"userid":"hal","clientid":"x"}"#;
    let long_status = format!(r#"{{"status":"{}"}}"#, "s".repeat(1025));
    let long_user = format!(r#"{{"userid":"{}"}}"#, "u".repeat(257));
    let cases: &[(Option<&str>, &str, u16)] = &[
        (None, r#"{"status":"1"}"#, 400),
        (Some("not json"), r#"{"status":"1"}"#, 400),
        (Some(r#"{"clientid":"x"}"#), r#"{"status":"1"}"#, 400),
        (Some(r#"{"userid":""}"#), r#"{"status":"1"}"#, 400),
        (Some(claim), "", 400),
        (Some(claim), "status=1", 400),
        (Some(claim), r#"["1"]"#, 400),
        (Some(claim), r#"{"status":1}"#, 400),
        (Some(claim), r#"{}"#, 400),
        (Some(claim), &long_status, 413),
        (Some(&long_user), r#"{"status":"1"}"#, 413),
    ];
    for (claim, body, status) in cases {
        heartbeat.post_ping(*claim, body).assert_refused(*status);
    }
    let big_body = format!(r#"{{"status":"{}"}}"#, "s".repeat(5000));
    let reason = heartbeat
        .post_ping(Some(claim), &big_body)
        .assert_refused(413)
        .to_owned();
    assert!(reason.contains("4096"), "{reason}");
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(keys.is_empty(), "nothing stored: {keys:?}");
}

#[test]
fn limits_hold_at_the_boundary_over_the_socket() {
    let heartbeat = Heartbeat::start("memory");
    let user_at = "u".repeat(256);
    assert_eq!(heartbeat.ping(&user_at, &"s".repeat(1024)).status, 200);
    assert_eq!(
        heartbeat
            .subscribe(&format!("/subscribe/{user_at}"))
            .head
            .status,
        200
    );
    heartbeat
        .request(
            format!("GET /subscribe/{user_at}u HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .assert_refused(413);

    // A head of exactly the default limit (16 KiB) is read; one byte more is refused with 431.
    let head = |total: usize| {
        let fixed = "GET /nope HTTP/1.1\r\nX-Pad: \r\nConnection: close\r\n\r\n".len();
        format!(
            "GET /nope HTTP/1.1\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(total - fixed)
        )
    };
    heartbeat
        .request(head(16384).as_bytes())
        .assert_refused(404);
    heartbeat
        .request(head(16385).as_bytes())
        .assert_refused(431);
}

#[test]
fn other_paths_get_404_and_other_methods_405_with_allow() {
    let heartbeat = Heartbeat::start("memory");
    let send = |method: &str, path: &str| {
        heartbeat.request(
            format!("{method} {path} HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    for path in [
        "/",
        "/favicon.ico",
        "/subscribe/",
        "/subscribe/u/client",
        "/ping/x",
    ] {
        send("GET", path).assert_refused(404);
    }
    let reply = send("GET", "/ping");
    reply.assert_refused(405);
    assert_eq!(reply.header("allow"), Some("POST"));
    for path in [
        "/subscribe/u/client/c",
        "/subscribe?user=u",
        "/status?user=u",
    ] {
        for method in ["POST", "DELETE", "PUT"] {
            let reply = send(method, path);
            reply.assert_refused(405);
            assert_eq!(reply.header("allow"), Some("GET"), "{method} {path}");
        }
    }
}

#[test]
fn pings_reuse_a_keep_alive_connection_and_http_1_0_closes() {
    let heartbeat = Heartbeat::start("memory");
    let claim = r#"{"userid":"ivy","clientid":"x"}"#;
    let ping = |status: &str, extra: &str| {
        let body = format!(r#"{{"status":"{status}"}}"#);
        format!(
            "POST /ping HTTP/1.1\r\nX-User-Claim: {claim}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let stream = heartbeat.connect();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Two pings one after the other, then two pipelined in one write.
    for status in ["1", "2"] {
        writer.write_all(ping(status, "").as_bytes()).unwrap();
        let reply = support::read_reply(&mut reader).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), None);
    }
    writer
        .write_all((ping("3", "") + &ping("4", "Connection: close\r\n")).as_bytes())
        .unwrap();
    assert_eq!(support::read_reply(&mut reader).unwrap().status, 200);
    let last = support::read_reply(&mut reader).unwrap();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(
        support::read_reply(&mut reader).is_err(),
        "closed after close"
    );

    let mut sse = heartbeat.subscribe("/subscribe/ivy");
    assert_eq!(sse.expect_ping(AT_ONCE).1, "4");

    let reply = heartbeat.request(
        format!(
            "POST /ping HTTP/1.0\r\nX-User-Claim: {claim}\r\nContent-Length: 14\r\n\r\n{{\"status\":\"5\"}}"
        )
        .as_bytes(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
}

#[test]
fn expect_100_continue_is_answered_so_curl_sends_its_body() {
    let heartbeat = Heartbeat::start("memory");
    let status = "c".repeat(1000);
    let body = format!(r#"{{"status":"{status}"}}"#);
    let mut stream = heartbeat.connect();
    write!(
        stream,
        "POST /ping HTTP/1.1\r\nX-User-Claim: {{\"userid\":\"jo\"}}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let interim = support::read_reply(&mut reader).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(support::read_reply(&mut reader).unwrap().status, 200);
    assert_eq!(
        heartbeat.subscribe("/subscribe/jo").expect_ping(AT_ONCE).1,
        status
    );
}

#[test]
fn an_http_1_0_subscriber_gets_unframed_events() {
    let heartbeat = Heartbeat::start("memory");
    heartbeat.ping("kim", "1");
    let mut sse = Sse::open(heartbeat.connect(), "/subscribe/kim", "HTTP/1.0");
    assert_eq!(sse.head.header("transfer-encoding"), None);
    assert_eq!(sse.expect_ping(AT_ONCE).1, "1");
}

#[test]
fn keepalive_comments_flow_at_the_configured_interval() {
    let heartbeat = Heartbeat::start_with(&[("REDIS", "memory"), ("KEEPALIVE_SECS", "1")]);
    let mut sse = heartbeat.subscribe("/subscribe/lee");
    let started = Instant::now();
    for _ in 0..2 {
        assert_eq!(
            sse.next(Duration::from_millis(1500)),
            Some(SseItem::Comment)
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

#[test]
fn a_stream_never_goes_back_in_time_under_a_burst() {
    let redis = Redis::start();
    let a = Heartbeat::start(&redis.addr());
    let b = Heartbeat::start(&redis.addr());
    // Pings through both instances while subscribers keep joining: every subscriber sees a
    // strictly increasing run of statuses, the cached one included (from 10: "3" is invisible).
    let pinger = {
        let (addr_a, addr_b) = (a.addr, b.addr);
        std::thread::spawn(move || {
            for n in 10..210u32 {
                let addr = if n % 2 == 0 { addr_a } else { addr_b };
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                let body = format!(r#"{{"status":"{n}"}}"#);
                let request = format!(
                    "POST /ping HTTP/1.1\r\nX-User-Claim: {{\"userid\":\"max\"}}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).unwrap();
                let reply = support::read_reply(&mut BufReader::new(stream)).unwrap();
                assert_eq!(reply.status, 200);
            }
        })
    };
    let mut streams = Vec::new();
    while !pinger.is_finished() {
        streams.push(a.subscribe("/subscribe/max"));
        streams.push(b.subscribe("/subscribe/max"));
        std::thread::sleep(Duration::from_millis(5));
    }
    pinger.join().unwrap();
    for sse in &mut streams {
        let mut seen = Vec::new();
        loop {
            let (_, status) = sse.expect_ping(SOON);
            let n: u32 = status.parse().unwrap();
            if let Some(&before) = seen.last() {
                assert!(n > before, "went from {before} to {n}: {seen:?}");
            }
            seen.push(n);
            if n == 209 {
                break;
            }
        }
    }
}

#[test]
fn pings_answer_503_fast_while_redis_is_down_at_start_and_200_once_it_is_up() {
    let port = support::free_port();
    let heartbeat = Heartbeat::launch_in(
        support::TempDir::new("down"),
        &[("REDIS", &format!("127.0.0.1:{port}"))],
    );
    let started = Instant::now();
    let reply = heartbeat.ping("nat", "1");
    let reason = reply.assert_refused(503).to_owned();
    assert!(started.elapsed() < Duration::from_secs(2), "answered fast");
    assert!(reason.contains("store"), "{reason}");
    let mut sse = heartbeat.subscribe("/subscribe/nat");
    assert_eq!(sse.head.status, 200, "a stream opens while Redis is down");

    let redis = Redis::start_on(port);
    heartbeat.wait_for_log("redis subscription up");
    assert_eq!(heartbeat.ping("nat", "2").status, 200);
    assert_eq!(sse.expect_ping(SOON).1, "2");
    drop(redis);
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_variable() {
    let cases = [
        ("LISTEN", "8080"),
        ("REDIS", "redis"),
        ("KEEPALIVE_SECS", "soon"),
        ("MAX_BODY_BYTES", "0"),
        ("LOG_LEVEL", "loud"),
        ("STATUS_PRIORITY", "2,,1"),
        ("INVISIBLE_STATUSES", "3,3"),
        ("DEVICE_TTL_SECS", "0"),
    ];
    for (var, value) in cases {
        let dir = support::TempDir::new("config");
        let output = std::process::Command::new(support::binary())
            .current_dir(&dir.0)
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(var) && stderr.contains(value) && stderr.contains("expected"),
            "{var}={value}: {stderr}"
        );
    }
}

#[test]
fn dot_env_supplies_defaults_that_the_environment_overrides() {
    let dir = support::TempDir::new("dotenv");
    std::fs::write(
        dir.0.join(".env"),
        "REDIS=memory\nKEEPALIVE_SECS=1\nLISTEN=127.0.0.1:1\n",
    )
    .unwrap();
    // LISTEN comes from the environment (an ephemeral port), REDIS and KEEPALIVE from .env.
    let heartbeat = Heartbeat::launch_in(dir, &[]);
    heartbeat.wait_for_log("store: in memory");
    let mut sse = heartbeat.subscribe("/subscribe/olive");
    assert_eq!(
        sse.next(Duration::from_millis(1500)),
        Some(SseItem::Comment)
    );

    let bad = support::TempDir::new("baddotenv");
    std::fs::write(bad.0.join(".env"), "REDIS='memory\n").unwrap();
    let output = std::process::Command::new(support::binary())
        .current_dir(&bad.0)
        .env_clear()
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(".env"));
}

#[test]
fn sigterm_ends_every_stream_with_the_last_chunk_and_exits_0() {
    let (_redis, mut heartbeat) = heartbeat_on_redis();
    let mut streams: Vec<Sse> = (0..5)
        .map(|i| heartbeat.subscribe(&format!("/subscribe/pam{i}")))
        .collect();
    let started = Instant::now();
    let status = heartbeat.signal_and_wait("TERM", Duration::from_secs(2));
    assert!(status.success(), "{status:?}");
    for sse in &mut streams {
        sse.expect_end(AT_ONCE);
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn every_route_sends_each_header_at_most_once() {
    let app = "https://app.example";
    let heartbeat = Heartbeat::start_with(&[("REDIS", "memory"), ("CORS_ORIGINS", app)]);
    let fenced = Heartbeat::start_with(&[("REDIS", "memory"), ("TRUSTED_PROXIES", "10.9.9.9")]);
    let claim = r#"{"userid":"u","clientid":"c"}"#;
    let body = r#"{"status":"1"}"#;
    let ask = |heartbeat: &Heartbeat, method: &str, target: &str, extra: &str, body: &str| {
        heartbeat.request(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: t\r\nOrigin: {app}\r\n{extra}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let with_claim = format!("X-User-Claim: {claim}\r\n");
    let big = format!(r#"{{"status":"{}"}}"#, "x".repeat(2000));
    let cases: Vec<(Reply, u16)> = vec![
        (ask(&heartbeat, "POST", "/ping", &with_claim, body), 200),
        (ask(&heartbeat, "POST", "/ping", "", body), 400),
        (ask(&heartbeat, "POST", "/ping", &with_claim, &big), 413),
        (ask(&fenced, "POST", "/ping", &with_claim, body), 403),
        (ask(&heartbeat, "GET", "/ping", "", ""), 405),
        (ask(&heartbeat, "OPTIONS", "/ping", "", ""), 204),
        (ask(&heartbeat, "OPTIONS", "/status?user=u", "", ""), 204),
        (ask(&heartbeat, "OPTIONS", "/subscribe/u", "", ""), 204),
        (ask(&heartbeat, "GET", "/status?user=u&user=v", "", ""), 200),
        (ask(&heartbeat, "GET", "/status", "", ""), 400),
        (ask(&heartbeat, "GET", "/healthz", "", ""), 200),
        (ask(&heartbeat, "GET", "/metrics", "", ""), 200),
        (ask(&heartbeat, "POST", "/metrics", "", ""), 405),
        (ask(&heartbeat, "GET", "/nowhere", "", ""), 404),
        (ask(&heartbeat, "GET", "/subscribe/%zz", "", ""), 400),
        (
            ask(
                &heartbeat,
                "GET",
                "/subscribe/u",
                "Last-Event-ID: x\r\n",
                "",
            ),
            400,
        ),
        (heartbeat.request(b"NOT HTTP\r\n\r\n"), 400),
        (
            heartbeat
                .request(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "x".repeat(20_000)).as_bytes()),
            431,
        ),
    ];
    for (reply, status) in &cases {
        assert_eq!(reply.status, *status, "{reply:?}");
        reply.assert_each_header_once();
    }
    let status = &cases[8].0;
    assert_eq!(status.header("content-type"), Some("application/json"));
    assert_eq!(status.header("access-control-allow-origin"), Some(app));
    let origin = format!("Origin: {app}\r\n");
    for path in [
        "/subscribe/u",
        "/subscribe/u/client/c",
        "/subscribe?user=u&user=v",
    ] {
        let sse = Sse::open_with(heartbeat.connect(), path, "HTTP/1.1", &origin);
        assert_eq!(sse.head.status, 200, "{path}");
        assert_eq!(sse.head.header("content-type"), Some("text/event-stream"));
        sse.head.assert_each_header_once();
    }
}
