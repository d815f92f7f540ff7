//! Who may watch whom, against the real binary: `WATCH_POLICY` on one Redis, in memory and on a
//! cluster; a hidden user indistinguishable from one never seen; and the flood limits.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Cluster, Heartbeat, Redis, Reply, SOON, Sse, key_prefix, read_reply};

/// The proxy's address; the tests' strangers connect from 127.0.0.2.
const PROXY: &str = "127.0.0.1";

fn claim(user: &str) -> String {
    format!(r#"{{"userid":"{user}","clientid":"web"}}"#)
}

fn claim_header(watcher: Option<&str>) -> String {
    watcher.map_or(String::new(), |w| format!("X-User-Claim: {}\r\n", claim(w)))
}

/// A connection from `source`, a loopback address of the test's choosing.
fn connect_from(addr: SocketAddr, source: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// `GET path` as `watcher` (no claim for `None`) from `source`; the reply in full.
fn get_as(hb: &Heartbeat, path: &str, watcher: Option<&str>, source: &str) -> Reply {
    let mut stream = connect_from(hb.addr, source);
    let head = claim_header(watcher);
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{head}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    read_reply(&mut BufReader::new(stream)).unwrap()
}

/// A stream of `path` opened as `watcher` from the proxy.
fn watch(hb: &Heartbeat, path: &str, watcher: &str) -> Sse {
    Sse::open_with(hb.connect(), path, "HTTP/1.1", &claim_header(Some(watcher)))
}

fn status(hb: &Heartbeat, users: &str, watcher: &str) -> serde_json::Value {
    let reply = get_as(hb, &format!("/status?{users}"), Some(watcher), PROXY);
    reply.assert_ok();
    serde_json::from_str(&reply.body).unwrap()
}

/// The count of Redis calls of kind `call` the instance has timed.
fn redis_calls(hb: &Heartbeat, call: &str) -> f64 {
    let name = format!("heartbeat_redis_call_duration_seconds_count{{call=\"{call}\"}}");
    hb.sample(&name).unwrap_or(0.0)
}

fn sadd(redis: &Redis, user: &str, watchers: &[&str]) {
    let key = format!("{}watchers:{user}", key_prefix());
    let _: i64 = redis.query(redis::cmd("SADD").arg(key).arg(watchers));
}

#[test]
fn unclaimed_and_untrusted_watchers_get_401_and_nothing_is_read() {
    let redis = Redis::start();
    let addr = redis.addr();
    let setups = [
        ("memory", "claimed"),
        (addr.as_str(), "claimed"),
        (addr.as_str(), "contacts"),
    ];
    for (store, policy) in setups {
        let hb = Heartbeat::start_with(&[
            ("REDIS", store),
            ("WATCH_POLICY", policy),
            ("TRUSTED_PROXIES", PROXY),
        ]);
        hb.ping("ann", "0").assert_ok();
        let reads = (
            redis_calls(&hb, "cached_read"),
            redis_calls(&hb, "contacts"),
        );
        for path in [
            "/subscribe/ann",
            "/subscribe/ann/client/x",
            "/subscribe?user=ann",
            "/status?user=ann",
        ] {
            let unclaimed = get_as(&hb, path, None, PROXY);
            let reason = unclaimed.assert_refused(401);
            assert!(
                reason.contains(&format!("WATCH_POLICY={policy}")),
                "{reason}"
            );
            let stranger = get_as(&hb, path, Some("bob"), "127.0.0.2");
            let reason = stranger.assert_refused(401);
            assert!(reason.contains("127.0.0.2"), "{reason}");
        }
        let now = (
            redis_calls(&hb, "cached_read"),
            redis_calls(&hb, "contacts"),
        );
        assert_eq!(
            now, reads,
            "{store} {policy}: nothing read for a refused watcher"
        );
        let no_claim = "heartbeat_watch_refused_total{reason=\"no_claim\"}";
        assert_eq!(hb.sample(no_claim), Some(4.0), "{store} {policy}");
        let untrusted = "heartbeat_watch_refused_total{reason=\"untrusted_peer\"}";
        assert_eq!(hb.sample(untrusted), Some(4.0), "{store} {policy}");
        // A claimed watcher from the proxy: ann herself, whom any policy lets her see.
        let mut sse = watch(&hb, "/subscribe/ann", "ann");
        sse.head.assert_ok();
        assert_eq!(sse.expect_ping(SOON).1, "0");
        assert_eq!(status(&hb, "user=ann", "ann")["ann"]["status"], "0");
        assert!(hb.logs().contains(&format!("WATCH_POLICY={policy}")));
    }
}

#[test]
fn open_is_the_default_lets_anyone_watch_and_warns() {
    for store in [Redis::start().addr(), "memory".into()] {
        let hb = Heartbeat::start_with(&[("REDIS", &store), ("TRUSTED_PROXIES", PROXY)]);
        hb.ping("ann", "1").assert_ok();
        let anyone = get_as(&hb, "/status?user=ann", None, "127.0.0.2");
        anyone.assert_ok();
        assert!(anyone.body.contains(r#""status":"1""#), "{}", anyone.body);
        let logs = hb.logs();
        assert!(logs.contains("WATCH_POLICY=open: any caller"), "{logs}");
    }
}

#[test]
fn contacts_with_memory_mode_or_never_ending_streams_stop_the_start() {
    // A port nothing listens on: the start must stop before any Redis is asked.
    let nowhere = format!("127.0.0.1:{}", support::free_port());
    for (store, streams, needle) in [
        ("memory", None, "memory mode has nowhere"),
        (nowhere.as_str(), Some("0"), "MAX_STREAM_SECS"),
    ] {
        let mut command = std::process::Command::new(support::binary());
        command
            .env_clear()
            .env("LISTEN", "127.0.0.1:0")
            .env("WATCH_POLICY", "contacts")
            .env("REDIS", store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(secs) = streams {
            command.env("MAX_STREAM_SECS", secs);
        }
        let mut child = command.spawn().unwrap();
        let exited = support::wait_until(SOON, || child.try_wait().unwrap().is_some());
        if exited.is_err() {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(exited.is_ok(), "{store}: still running: {stderr}");
        assert!(!out.status.success(), "{store}");
        assert!(
            stderr.contains(needle) && stderr.contains("WATCH_POLICY"),
            "{stderr}"
        );
    }
}

/// The bytes of a reply with `name` written as `X`: what two users' answers share if nothing
/// tells them apart.
fn shape(reply: &Reply, name: &str) -> String {
    format!("{} {:?} {}", reply.status, reply.headers, reply.body).replace(name, "X")
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times `request` of the hidden user and of the one never seen, alternated `rounds` times,
/// and asserts their medians are within noise of each other.
fn assert_alike_in_time(what: &str, rounds: usize, request: impl Fn(&str)) {
    let (mut hidden, mut fresh) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (user, times) in [("hidden", &mut hidden), ("fresh1", &mut fresh)] {
            let started = Instant::now();
            request(user);
            times.push(started.elapsed());
        }
    }
    let (hidden, fresh) = (median(hidden), median(fresh));
    let apart = hidden.abs_diff(fresh);
    assert!(
        apart < Duration::from_micros(300) || apart < fresh / 2,
        "{what}: hidden {hidden:?} against never seen {fresh:?}"
    );
}

#[test]
fn a_hidden_user_looks_exactly_like_an_allowed_user_never_seen() {
    let redis = Redis::start();
    let hb = Heartbeat::start_with(&[
        ("REDIS", &redis.addr()),
        ("WATCH_POLICY", "contacts"),
        ("TRUSTED_PROXIES", PROXY),
    ]);
    // hidden pings and lets only carol see it; fresh lets bob see it and never pinged.
    sadd(&redis, "hidden", &["carol"]);
    sadd(&redis, "fresh1", &["bob"]);
    hb.ping("hidden", "0").assert_ok();
    assert_eq!(status(&hb, "user=hidden", "carol")["hidden"]["status"], "0");

    let answer = |user: &str| get_as(&hb, &format!("/status?user={user}"), Some("bob"), PROXY);
    assert_eq!(
        shape(&answer("hidden"), "hidden"),
        shape(&answer("fresh1"), "fresh1")
    );
    let both = status(&hb, "user=hidden&user=fresh1", "bob");
    assert_eq!(both, serde_json::json!({"hidden": null, "fresh1": null}));

    for form in [
        "/subscribe/{}",
        "/subscribe/{}/client/web",
        "/subscribe?user={}",
    ] {
        let mut opened = Vec::new();
        for user in ["hidden", "fresh1"] {
            let mut sse = watch(&hb, &form.replace("{}", user), "bob");
            sse.expect_no_data(Duration::from_millis(300));
            opened.push(shape(&sse.head, user));
        }
        assert_eq!(opened[0], opened[1], "{form}");
    }
    // Times, alternated, within noise: the hidden user's presence is read and dropped.
    assert_alike_in_time("/status", 40, |user| answer(user).assert_ok());
    assert_alike_in_time("stream opening", 20, |user| {
        watch(&hb, &format!("/subscribe/{user}"), "bob")
            .head
            .assert_ok()
    });
}

#[test]
fn a_removed_watcher_loses_the_user_at_the_next_reconnect_and_a_star_shows_everyone() {
    let redis = Redis::start();
    let hb = Heartbeat::start_with(&[
        ("REDIS", &redis.addr()),
        ("WATCH_POLICY", "contacts"),
        ("TRUSTED_PROXIES", PROXY),
        ("MAX_STREAM_SECS", "1"),
    ]);
    sadd(&redis, "alice", &["bob"]);
    hb.ping("alice", "0").assert_ok();
    let mut sse = watch(&hb, "/subscribe/alice", "bob");
    let (first, _) = sse.expect_ping(SOON);
    let key = format!("{}watchers:alice", key_prefix());
    let _: i64 = redis.query(redis::cmd("SREM").arg(&key).arg("bob"));
    sse.expect_end(Duration::from_secs(3));

    // The EventSource reconnects with its Last-Event-ID: checked again, alice is gone.
    let header = format!("{}Last-Event-ID: {first}\r\n", claim_header(Some("bob")));
    let mut again = Sse::open_with(hb.connect(), "/subscribe/alice", "HTTP/1.1", &header);
    again.head.assert_ok();
    hb.ping("alice", "1").assert_ok();
    again.expect_no_data(Duration::from_millis(500));
    assert_eq!(
        status(&hb, "user=alice", "bob")["alice"],
        serde_json::Value::Null
    );
    // Alice may always see herself.
    assert_eq!(
        watch(&hb, "/subscribe/alice", "alice").expect_ping(SOON).1,
        "1"
    );

    // `*`: everyone, carol who was never listed included.
    sadd(&redis, "alice", &["*"]);
    for watcher in ["bob", "carol"] {
        let mut sse = watch(&hb, "/subscribe/alice", watcher);
        assert_eq!(sse.expect_ping(SOON).1, "1", "{watcher}");
        assert_eq!(status(&hb, "user=alice", watcher)["alice"]["status"], "1");
    }
}

#[test]
fn a_device_at_100_pings_a_second_gets_429s_and_its_watchers_at_most_the_limit() {
    let redis = Redis::start();
    for store in [redis.addr(), "memory".into()] {
        let hb = Heartbeat::start_with(&[("REDIS", &store), ("MAX_PINGS_PER_MINUTE", "30")]);
        let mut watcher = hb.subscribe("/subscribe/flood");
        let calm = std::thread::scope(|scope| {
            let calm = scope.spawn(|| {
                // Another user meanwhile, at 5 pings a second: every one stored.
                (0..15)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(200));
                        hb.ping("calm", "1").status
                    })
                    .collect::<Vec<u16>>()
            });
            let started = Instant::now();
            let (mut stored, mut refused) = (0, 0);
            for i in 0..300u32 {
                let at = started + Duration::from_millis(10) * i;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let reply = hb.ping("flood", "0");
                match reply.status {
                    200 => stored += 1,
                    429 => {
                        refused += 1;
                        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
                        assert!((1..=70).contains(&wait), "Retry-After: {wait}");
                        assert!(reply.assert_refused(429).contains("30 pings a minute"));
                    }
                    other => panic!("{other}: {reply:?}"),
                }
            }
            assert_eq!((stored, refused), (30, 270), "{store}");
            calm.join().unwrap()
        });
        assert!(calm.iter().all(|&s| s == 200), "{store}: {calm:?}");
        let mut events = 0;
        while watcher.next(Duration::from_millis(500)).is_some() {
            events += 1;
        }
        assert_eq!(events, 30, "{store}: the watcher got only the stored pings");
        let limited = "heartbeat_pings_refused_total{reason=\"rate_limited\"}";
        assert_eq!(hb.sample(limited), Some(270.0), "{store}");
    }
}

#[test]
fn a_watcher_holds_at_most_its_streams_per_instance() {
    let hb = Heartbeat::start_with(&[
        ("REDIS", "memory"),
        ("WATCH_POLICY", "claimed"),
        ("MAX_STREAMS_PER_WATCHER", "2"),
    ]);
    let first = watch(&hb, "/subscribe/a", "bob");
    let second = watch(&hb, "/subscribe?user=a&user=b", "bob");
    first.head.assert_ok();
    second.head.assert_ok();
    let third = get_as(&hb, "/subscribe/c", Some("bob"), PROXY);
    assert!(
        third
            .assert_refused(429)
            .contains("MAX_STREAMS_PER_WATCHER")
    );
    assert!(third.header("retry-after").is_some());
    watch(&hb, "/subscribe/a", "carol").head.assert_ok();
    let refused = "heartbeat_watch_refused_total{reason=\"too_many_streams\"}";
    assert_eq!(hb.sample(refused), Some(1.0));
    drop(first);
    // The hang-up is noticed and the stream's place freed.
    support::wait_until(SOON, || {
        watch(&hb, "/subscribe/c", "bob").head.status == 200
    })
    .expect("a place freed by the closed stream");
}

#[test]
fn contacts_on_a_cluster_check_each_users_set_on_its_master() {
    let cluster = Cluster::start();
    let hb = Heartbeat::start_with(&[("REDIS", &cluster.url()), ("WATCH_POLICY", "contacts")]);
    // Ids in different slots, each set written on the master of the user's slot.
    let users = ["alice", "carol", "erin", "frank"];
    let masters: std::collections::HashSet<usize> = users
        .iter()
        .map(|u| cluster.master_of(&format!("{{u:{u}}}")))
        .collect();
    assert!(masters.len() >= 2, "the users span masters");
    for (user, watchers) in [
        ("alice", vec!["bob"]),
        ("carol", vec!["dan"]),
        ("erin", vec!["*"]),
    ] {
        let key = format!("{}watchers:{{u:{user}}}", key_prefix());
        let node = &cluster.nodes[cluster.master_of(&key)];
        let _: i64 = node.query(redis::cmd("SADD").arg(key).arg(watchers));
    }
    for user in users {
        hb.ping(user, "0").assert_ok();
    }
    let seen = status(
        &hb,
        "user=alice&user=carol&user=erin&user=frank&user=bob",
        "bob",
    );
    let visible: Vec<&str> = users
        .iter()
        .copied()
        .filter(|u| !seen[u].is_null())
        .collect();
    assert_eq!(visible, ["alice", "erin"], "{seen}");
    let mut sse = watch(
        &hb,
        "/subscribe?user=alice&user=carol&user=erin&user=frank",
        "bob",
    );
    let mut got: Vec<String> = (0..2).map(|_| sse.expect_user_ping(SOON).1.0).collect();
    got.sort();
    assert_eq!(got, ["alice", "erin"]);
    for user in users {
        hb.ping(user, "1").assert_ok();
    }
    let mut live: Vec<String> = (0..2).map(|_| sse.expect_user_ping(SOON).1.0).collect();
    live.sort();
    assert_eq!(live, ["alice", "erin"]);
    sse.expect_no_data(Duration::from_millis(500));
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Sends `count` pings of `user` from distinct devices named `<tag>-<i>` on one keep-alive
/// connection; each must be answered `200`.
fn ping_devices(hb: &Heartbeat, user: &str, tag: &str, count: usize) {
    let stream = hb.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = std::io::BufWriter::new(stream);
    let body = r#"{"status":"0"}"#;
    // Pipelined in windows of 64, so that the test takes a second, not a minute.
    for window in (0..count).collect::<Vec<_>>().chunks(64) {
        for i in window {
            let claim = format!(r#"{{"userid":"{user}","clientid":"{tag}-{i}"}}"#);
            write!(
                out,
                "POST /ping HTTP/1.1\r\nHost: t\r\nX-User-Claim: {claim}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        out.flush().unwrap();
        for _ in window {
            let reply = read_reply(&mut reader).unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    }
    let _ = reader.fill_buf();
}

#[test]
fn a_hundred_thousand_fake_devices_keep_the_ping_table_within_its_bound() {
    let redis = Redis::start();
    let hb = Heartbeat::start_with(&[("REDIS", &redis.addr()), ("MAX_PINGS_PER_MINUTE", "30")]);
    // The ping path warmed (a writer, its Redis connection), but not the table.
    hb.ping("fake", "0").assert_ok();
    let before = rss(hb.pid());
    std::thread::scope(|s| {
        for t in 0..4 {
            let hb = &hb;
            s.spawn(move || ping_devices(hb, "fake", &format!("t{t}"), 25_000));
        }
    });
    let grown = rss(hb.pid()).saturating_sub(before);
    eprintln!(
        "figure: RSS grew by {} KiB for 100,000 fake devices",
        grown / 1024
    );
    // The table is 65,536 slots of 32 bytes, 2 MiB, allocated untouched; the rest is slack
    // for four connections' threads and the allocator. A map keeping every device would grow
    // by 100,000 ids and entries.
    let bound = 2 * 1024 * 1024 + 1536 * 1024;
    assert!(
        grown <= bound,
        "RSS grew by {grown} bytes for 100,000 fake devices (bound {bound})"
    );
    let limited = "heartbeat_pings_refused_total{reason=\"rate_limited\"}";
    assert_eq!(hb.sample(limited), Some(0.0));
}

#[test]
fn without_redis_a_contacts_check_is_a_fast_503_and_works_again_after() {
    let mut redis = Redis::start();
    let hb = Heartbeat::start_with(&[
        ("REDIS", &redis.addr()),
        ("WATCH_POLICY", "contacts"),
        ("REDIS_TIMEOUT_MS", "300"),
    ]);
    sadd(&redis, "alice", &["bob"]);
    hb.ping("alice", "0").assert_ok();
    redis.kill();
    for path in [
        "/subscribe/alice",
        "/subscribe?user=alice&user=bob",
        "/status?user=alice",
    ] {
        let started = Instant::now();
        let reply = get_as(&hb, path, Some("bob"), PROXY);
        reply.assert_refused(503);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{path}: 503 after {took:?}");
    }
    redis.restart();
    support::wait_until(Duration::from_secs(10), || {
        get_as(&hb, "/status?user=alice", Some("bob"), PROXY).status == 200
    })
    .expect("checks again once Redis is back");
    // The restarted Redis kept nothing; the app writes alice's set again.
    sadd(&redis, "alice", &["bob"]);
    hb.ping("alice", "1").assert_ok();
    assert_eq!(
        watch(&hb, "/subscribe/alice", "bob").expect_ping(SOON).1,
        "1"
    );
}
