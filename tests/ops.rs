//! What operators use: health, metrics, CORS, logs, `--version`, `healthcheck`, and the curl
//! smoke script, against the real binary.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{AT_ONCE, Heartbeat, Redis, SOON, heartbeat_on_redis, sample_in};

#[test]
fn healthz_is_200_with_redis_up_and_503_with_a_reason_when_it_is_down() {
    let (mut redis, heartbeat) = heartbeat_on_redis();
    let ok = heartbeat.get("/healthz");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok", "store": "redis"}));

    redis.kill();
    let down = heartbeat.get("/healthz");
    assert_eq!(down.status, 503);
    let body: serde_json::Value = serde_json::from_str(&down.body).unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // Whichever noticed first: the feed's connection, or the health check's PING.
    assert!(
        matches!(body["cause"].as_str(), Some("feed_down" | "unavailable")),
        "{body}"
    );
}

#[test]
fn healthz_is_503_when_only_the_subscription_is_down() {
    let redis = Redis::start();
    // A user that may do everything but PSUBSCRIBE: pings work, the subscription cannot.
    let _: String = redis.query(redis::cmd("ACL").arg("SETUSER").arg("nosub").arg(&[
        "on",
        ">secret",
        "~*",
        "&*",
        "+@all",
        "-psubscribe",
    ]));
    let url = format!("redis://nosub:secret@127.0.0.1:{}", redis.port);
    let dir = support::TempDir::new("nosub");
    let heartbeat = Heartbeat::launch_in(dir, &[("REDIS", &url)]);
    heartbeat.wait_for_log("redis subscription down");
    assert!(
        !heartbeat.logs().contains("secret"),
        "the password is not logged"
    );
    assert_eq!(
        heartbeat.ping("ivan", "1").status,
        200,
        "plain commands work"
    );
    let health = heartbeat.get("/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert!(health.body.contains("subscription down"), "{}", health.body);
    // A permission refused is named as such: retrying will not mend it.
    assert!(
        health.body.contains(r#""cause":"permission_denied""#)
            && health.body.contains("'psubscribe'"),
        "{}",
        health.body
    );
    let metrics = heartbeat.get("/metrics").body;
    assert!(
        metrics.contains("\nheartbeat_redis_subscription_up 0\n"),
        "{metrics}"
    );
}

#[test]
fn metrics_count_pings_streams_and_deliveries_in_prometheus_text() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let mut sse = heartbeat.subscribe("/subscribe/jan");
    heartbeat.ping("jan", "1");
    heartbeat.ping("jan", "2");
    heartbeat.post_ping(None, "{}").assert_refused(400);
    assert_eq!(sse.expect_ping(SOON).1, "1");
    assert_eq!(sse.expect_ping(SOON).1, "2");
    // A delivery is counted just after its event is written, which the client may read
    // first.
    support::wait_until(SOON, || {
        sample(&heartbeat, "heartbeat_events_delivered_total") == Some(2.0)
    })
    .expect("both deliveries counted");

    let reply = heartbeat.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let value = |name: &str| -> u64 {
        let value = sample_in(&reply.body, name);
        value.unwrap_or_else(|| panic!("no {name} in\n{}", reply.body)) as u64
    };
    assert_eq!(value("heartbeat_pings_accepted_total"), 2);
    assert_eq!(
        value("heartbeat_pings_refused_total{reason=\"invalid\"}"),
        1
    );
    assert_eq!(value("heartbeat_streams"), 1);
    assert_eq!(value("heartbeat_events_delivered_total"), 2);
    assert_eq!(value("heartbeat_redis_subscription_up"), 1);
    assert_eq!(
        value("heartbeat_feed_messages_total"),
        2,
        "the two pings, back from Redis"
    );
    assert_eq!(
        value(&format!(
            "heartbeat_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1
    );
}

#[test]
fn cors_allows_the_configured_origin_on_pings_preflights_and_streams() {
    let app = "http://app.example:3000";
    let heartbeat = Heartbeat::start_with(&[("REDIS", "memory"), ("CORS_ORIGINS", app)]);
    let preflight = heartbeat.request(
        format!(
            "OPTIONS /ping HTTP/1.1\r\nOrigin: {app}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type, x-user-claim\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(app));
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("X-User-Claim")
    );

    let body = r#"{"status":"1"}"#;
    let ping = heartbeat.request(
        format!(
            "POST /ping HTTP/1.1\r\nOrigin: {app}\r\nX-User-Claim: {{\"userid\":\"kai\"}}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(ping.status, 200);
    assert_eq!(ping.header("access-control-allow-origin"), Some(app));

    let stream = heartbeat.connect();
    let request = format!("GET /subscribe/kai HTTP/1.1\r\nOrigin: {app}\r\n\r\n");
    std::io::Write::write_all(&mut &stream, request.as_bytes()).unwrap();
    let head = support::read_reply(&mut std::io::BufReader::new(stream)).unwrap();
    assert_eq!(head.header("access-control-allow-origin"), Some(app));

    let without = Heartbeat::start("memory");
    let reply = without.post_ping(Some(r#"{"userid":"kai"}"#), body);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        None,
        "off by default"
    );
}

/// The value of the sample `name` (with its labels) in `/metrics`, if present.
fn sample(heartbeat: &Heartbeat, name: &str) -> Option<f64> {
    heartbeat.sample(name)
}

#[test]
fn histograms_count_pings_deliveries_redis_calls_and_stream_lifetimes() {
    let (mut redis, heartbeat) = heartbeat_on_redis();
    let count = |name: &str| sample(&heartbeat, name).unwrap_or_else(|| panic!("no {name}"));
    let mut sse = heartbeat.subscribe("/subscribe/hist");
    heartbeat.ping("hist", "1").assert_ok();
    heartbeat.ping("hist", "2").assert_ok();
    heartbeat.post_ping(None, "{}").assert_refused(400);
    assert_eq!(sse.expect_ping(SOON).1, "1");
    assert_eq!(sse.expect_ping(SOON).1, "2");
    assert_eq!(heartbeat.get("/healthz").status, 200);
    drop(sse);
    support::wait_until(SOON, || {
        sample(
            &heartbeat,
            "heartbeat_stream_duration_seconds_count{end=\"client_gone\"}",
        ) == Some(1.0)
    })
    .expect("the stream's end is counted");

    let ping = |outcome: &str| {
        count(&format!(
            "heartbeat_ping_duration_seconds_count{{outcome=\"{outcome}\"}}"
        ))
    };
    let call = |call: &str| {
        count(&format!(
            "heartbeat_redis_call_duration_seconds_count{{call=\"{call}\"}}"
        ))
    };
    // Each is recorded just after its response or event is written, which the client may
    // read first: wait for the last of them.
    support::wait_until(SOON, || {
        ping("stored") == 2.0
            && ping("refused") == 1.0
            && count("heartbeat_delivery_lag_seconds_count") == 2.0
    })
    .expect("the pings and deliveries are recorded");
    assert_eq!(ping("stored"), 2.0);
    assert_eq!(ping("refused"), 1.0);
    assert_eq!(ping("unavailable"), 0.0);
    assert_eq!(
        count("heartbeat_delivery_lag_seconds_count"),
        2.0,
        "the two live events"
    );
    assert_eq!(call("record"), 2.0);
    assert!(call("cached_read") >= 1.0, "the stream's cached read");
    assert!(call("health") >= 1.0);
    assert_eq!(
        count("heartbeat_stream_duration_seconds_count{end=\"shutdown\"}"),
        0.0
    );
    // Each histogram has its buckets (cumulative, ending at +Inf = count) and its sum.
    for (family, labels) in [
        ("heartbeat_ping_duration_seconds", "outcome=\"stored\""),
        ("heartbeat_delivery_lag_seconds", ""),
        ("heartbeat_redis_call_duration_seconds", "call=\"record\""),
        ("heartbeat_stream_duration_seconds", "end=\"client_gone\""),
    ] {
        let with = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("{{{extra}}}"),
            (false, true) => format!("{{{labels}}}"),
            (false, false) => format!("{{{extra},{labels}}}"),
        };
        let total = count(&format!("{family}_count{}", with("")));
        let inf = count(&format!("{family}_bucket{}", with("le=\"+Inf\"")));
        assert_eq!(inf, total, "{family}");
        assert!(
            count(&format!("{family}_sum{}", with(""))) > 0.0,
            "{family}"
        );
    }
    let lag = count("heartbeat_delivery_lag_seconds_bucket{le=\"1.0\"}");
    assert_eq!(lag, 2.0, "both delivered within a second of being stored");

    redis.kill();
    heartbeat.ping("hist", "3").assert_refused(503);
    support::wait_until(SOON, || ping("unavailable") == 1.0).expect("the 503 is recorded");
}

/// The metric names in a PromQL expression: every identifier that starts `heartbeat_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("heartbeat_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_metrics_exposes() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let exposed: std::collections::HashSet<String> = heartbeat
        .get("/metrics")
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/heartbeat.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("JSON");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries no heartbeat metric");
            for name in names {
                assert!(
                    exposed.contains(&name),
                    "panel {:?} queries {name}, which /metrics does not expose",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} metric references checked");
}

#[test]
fn only_trusted_proxies_may_claim_a_user_when_they_are_set() {
    let redis = Redis::start();
    let open = Heartbeat::start(&redis.addr());
    assert!(
        open.logs().contains("TRUSTED_PROXIES is not set"),
        "the start warns:\n{}",
        open.logs()
    );
    let elsewhere = Heartbeat::start_with(&[
        ("REDIS", &redis.addr()),
        ("TRUSTED_PROXIES", "10.9.9.9, 192.168.0.0/16"),
    ]);
    let reason = elsewhere
        .ping("mallory", "1")
        .assert_refused(403)
        .to_owned();
    assert!(reason.contains("TRUSTED_PROXIES"), "{reason}");
    assert!(reason.contains("127.0.0.1"), "names the peer: {reason}");
    let status = open.get("/status?user=mallory");
    assert_eq!(
        status.body.trim(),
        r#"{"mallory":null}"#,
        "nothing was stored"
    );
    // A request without a claim is not refused.
    assert_eq!(elsewhere.get("/status?user=mallory").status, 200);

    let local =
        Heartbeat::start_with(&[("REDIS", &redis.addr()), ("TRUSTED_PROXIES", "127.0.0.0/8")]);
    local.ping("alice", "1").assert_ok();
    assert!(
        local
            .logs()
            .contains("X-User-Claim accepted from 127.0.0.0/8")
    );
}

#[test]
fn the_static_binary_runs_alone_in_an_empty_root_as_uid_10001_reaching_redis_by_name() {
    let binary = support::binary();
    // `cargo test` alone runs the debug build, which needs the host's libraries; CI runs the
    // suite against the musl build that ships (HEARTBEAT_BIN), and so this test.
    let why = format!("{binary:?} is not static; set HEARTBEAT_BIN to the musl build");
    if !support::runs_here(support::is_static(&binary), &why) {
        return;
    }
    let redis = Redis::start();
    let dir = support::TempDir::new("scratch");
    let heartbeat = Heartbeat::launch_in_empty_root(
        dir,
        &[("REDIS", &format!("redis-box:{}", redis.port))],
        "127.0.0.1 localhost\n127.0.0.1 redis-box\n",
    );
    heartbeat.wait_for_log("redis subscription up");
    assert!(
        heartbeat
            .logs()
            .contains("store: redis at redis://redis-box:")
    );

    // It runs as uid 10001: the child of unshare, in the host's view.
    let children = support::children_of(heartbeat.pid());
    assert_eq!(children.len(), 1, "one process under unshare: {children:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", children[0])).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next());
    assert_eq!(uid, Some("10001"));
    let pid = children[0];

    heartbeat.ping("scratch", "1").assert_ok();
    let mut stream = heartbeat.subscribe("/subscribe?user=scratch");
    let (_, (user, _, status)) = stream.expect_user_ping(SOON);
    assert_eq!((user.as_str(), status.as_str()), ("scratch", "1"));
    assert_eq!(heartbeat.get("/healthz").status, 200);
    drop(heartbeat);
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.contains(") Z "))
    };
    support::wait_until(SOON, gone).expect("the heartbeat in the empty root ends with the test");
}

#[test]
fn info_logs_have_no_line_per_request() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let before = heartbeat.logs().lines().count();
    for n in 0..20 {
        heartbeat.ping("lou", &format!("s{n}"));
        let mut sse = heartbeat.subscribe("/subscribe/lou");
        sse.expect_ping(AT_ONCE);
    }
    heartbeat.post_ping(None, "{}").assert_refused(400);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        heartbeat.logs().lines().count(),
        before,
        "{}",
        heartbeat.logs()
    );
}

#[test]
fn the_start_line_names_the_budget_and_a_futex_hash_sized_for_it() {
    let heartbeat = Heartbeat::start_with(&[("REDIS", "memory"), ("MAX_CONNECTIONS", "3000")]);
    let line = heartbeat.wait_for_log("listening on ");
    assert!(
        line.contains("budget 3000 connections (bound by MAX_CONNECTIONS)"),
        "{line}"
    );
    // A bucket per connection thread, rounded up to a power of two. A kernel
    // before 6.17 has no private futex hash to size, refuses, and the line says so.
    assert!(
        line.contains("; 4096 futex hash buckets;")
            || line.contains("; the kernel's futex hash (Invalid argument"),
        "{line}"
    );
}

#[test]
fn version_and_healthcheck_commands() {
    let binary = support::binary();
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("heartbeat {}\n", env!("CARGO_PKG_VERSION"))
    );
    let usage = Command::new(&binary).arg("--bogus").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: heartbeat"));

    let heartbeat = Heartbeat::start("memory");
    let dir = support::TempDir::new("healthcheck");
    let check = |listen: &str| {
        Command::new(&binary)
            .arg("healthcheck")
            .current_dir(&dir.0)
            .env_clear()
            .env("LISTEN", listen)
            .output()
            .unwrap()
    };
    let healthy = check(&format!(":{}", heartbeat.addr.port()));
    assert!(healthy.status.success(), "{healthy:?}");
    let nothing = check(&format!("127.0.0.1:{}", support::free_port()));
    assert_eq!(nothing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("heartbeat:"));
}

#[test]
fn the_curl_smoke_script_passes_against_the_binary() {
    let (_redis, heartbeat) = heartbeat_on_redis();
    let output = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smoke.sh"))
        .arg(format!("http://{}", heartbeat.addr))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.lines().filter(|l| l.starts_with("ok ")).count() >= 5,
        "{printed}"
    );

    // And it fails, saying why, when the service is not there.
    let output = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smoke.sh"))
        .arg(format!("http://127.0.0.1:{}", support::free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("FAIL"));
}
