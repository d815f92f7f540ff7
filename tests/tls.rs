//! TLS to Redis: `rediss://` to one TLS-only `redis-server` and `clusters://` to a TLS-only
//! cluster, with certificates of the test's own (`openssl`). Pings, streams and `/status`
//! work; a CA that did not sign the server's certificate, or a certificate for another name,
//! stops the start and says so; a certificate refused after the start is a `503` that says
//! so; mutual TLS needs the client certificate and works with it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, Heartbeat, Pki, SseItem, TempDir};

/// A ping of `user` reaches a stream on `watching`, and `/status` there shows it.
fn a_ping_is_stored_and_delivered(pinging: &Heartbeat, watching: &Heartbeat, user: &str) {
    let mut sse = watching.subscribe(&format!("/subscribe/{user}"));
    assert_eq!(pinging.ping(user, "1").status, 200);
    match sse.next(Duration::from_secs(5)) {
        Some(SseItem::Data(data)) => assert!(data.contains(r#""status":"1""#), "{data}"),
        other => panic!("no event for {user}: {other:?}\n{}", watching.logs()),
    }
    let status = watching.get(&format!("/status?user={user}"));
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(status.body.contains(r#""status":"1""#), "{}", status.body);
}

/// Runs the binary with `env` and returns what it logged, asserting it exited non-zero
/// within 10 s.
fn refused_start(env: &[(&str, &str)]) -> String {
    let dir = TempDir::new("tls-refused");
    let mut child = Command::new(support::binary())
        .current_dir(&dir.0)
        .env_clear()
        .env("LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("heartbeat started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pings_streams_and_status_over_tls_to_one_redis() {
    let pki = Pki::new();
    let mut redis = pki.redis("server", false);
    let url = format!("rediss://localhost:{}", redis.port);
    let ca = pki.file("ca.crt");
    let env = [("REDIS", url.as_str()), ("REDIS_CA_FILE", ca.as_str())];
    let (one, two) = (Heartbeat::start_with(&env), Heartbeat::start_with(&env));
    assert!(one.logs().contains("TLS with Redis: certificate accepted"));
    a_ping_is_stored_and_delivered(&one, &two, "tess");
    assert_eq!(two.get("/healthz").status, 200);

    // Restarted with the same certificate: the pooled connections are new handshakes, made
    // on a connection thread's small stack (/healthz) and on the feed's.
    let port = redis.port;
    redis.kill();
    redis = pki
        .redis_on(port, "server", false)
        .expect("restart on its port");
    two.wait_for_log_count("redis subscription up", 2);
    let healthy = support::wait_until(Duration::from_secs(5), || two.get("/healthz").status == 200);
    assert!(healthy.is_ok(), "{}", two.logs());
    a_ping_is_stored_and_delivered(&two, &one, "tessa");
    drop(redis);
}

#[test]
fn a_certificate_refused_stops_the_start_and_says_why() {
    let pki = Pki::new();
    let redis = pki.redis("server", false);
    let by_name = format!("rediss://localhost:{}", redis.port);

    // No REDIS_CA_FILE: the built-in public roots did not sign a test CA.
    let log = refused_start(&[("REDIS", &by_name)]);
    assert!(
        log.contains("TLS with Redis failed: invalid peer certificate: UnknownIssuer"),
        "{log}"
    );

    let other = pki.file("other-ca.crt");
    let log = refused_start(&[("REDIS", &by_name), ("REDIS_CA_FILE", &other)]);
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );

    // Signed by the right CA, for another host name.
    let misnamed = pki.redis("misnamed", false);
    let url = format!("rediss://localhost:{}", misnamed.port);
    let ca = pki.file("ca.crt");
    let log = refused_start(&[("REDIS", &url), ("REDIS_CA_FILE", &ca)]);
    assert!(
        log.contains("invalid peer certificate: certificate not valid for name"),
        "{log}"
    );

    // A URL that asks to skip the check is not taken.
    let insecure = format!("{by_name}/#insecure");
    let log = refused_start(&[("REDIS", &insecure), ("REDIS_CA_FILE", &ca)]);
    assert!(log.contains("invalid REDIS="), "{log}");

    // TLS files without a TLS address, and a certificate without its key, are refused.
    let plain = format!("127.0.0.1:{}", redis.port);
    let log = refused_start(&[("REDIS", &plain), ("REDIS_CA_FILE", &ca)]);
    assert!(log.contains("a TLS address"), "{log}");
    let cert = pki.file("client.crt");
    let log = refused_start(&[("REDIS", &by_name), ("REDIS_CLIENT_CERT_FILE", &cert)]);
    assert!(log.contains("REDIS_CLIENT_KEY_FILE set as well"), "{log}");
}

#[test]
fn a_certificate_refused_after_the_start_is_a_503_that_says_so() {
    let pki = Pki::new();
    let mut redis = pki.redis("server", false);
    let port = redis.port;
    let url = format!("rediss://localhost:{port}");
    let ca = pki.file("ca.crt");
    let heartbeat = Heartbeat::start_with(&[("REDIS", &url), ("REDIS_CA_FILE", &ca)]);
    assert_eq!(heartbeat.ping("tim", "1").status, 200);

    redis.kill();
    let _misnamed = pki
        .redis_on(port, "misnamed", false)
        .expect("restart on its port");
    let mut reply = heartbeat.ping("tim", "1");
    let refused = support::wait_until(Duration::from_secs(5), || {
        reply = heartbeat.ping("tim", "1");
        reply.status == 503 && reply.body.contains("TLS with Redis failed")
    });
    assert!(
        refused.is_ok(),
        "no TLS 503: {}\n{}",
        reply.body,
        heartbeat.logs()
    );
    assert!(
        reply.body.contains("certificate not valid for name"),
        "{}",
        reply.body
    );
    let health = heartbeat.get("/healthz");
    assert_eq!(health.status, 503);
    assert!(health.body.contains("tls"), "{}", health.body);
    assert!(!heartbeat.exited());
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let redis = pki.redis("server", true);
    let url = format!("rediss://localhost:{}", redis.port);
    let ca = pki.file("ca.crt");
    let log = refused_start(&[("REDIS", &url), ("REDIS_CA_FILE", &ca)]);
    assert!(log.contains("TLS with Redis failed"), "{log}");

    let (cert, key) = (pki.file("client.crt"), pki.file("client.key"));
    let env = [
        ("REDIS", url.as_str()),
        ("REDIS_CA_FILE", ca.as_str()),
        ("REDIS_CLIENT_CERT_FILE", cert.as_str()),
        ("REDIS_CLIENT_KEY_FILE", key.as_str()),
    ];
    let (one, two) = (Heartbeat::start_with(&env), Heartbeat::start_with(&env));
    a_ping_is_stored_and_delivered(&one, &two, "mona");
}

#[test]
fn pings_streams_and_status_over_tls_to_a_cluster() {
    let pki = Pki::new();
    let cluster = Cluster::start_tls(&pki);
    let url = cluster.url();
    assert!(url.starts_with("clusters://"));
    let ca = pki.file("ca.crt");
    let env = [("REDIS", url.as_str()), ("REDIS_CA_FILE", ca.as_str())];
    let (one, two) = (Heartbeat::start_with(&env), Heartbeat::start_with(&env));
    for n in 0..6 {
        a_ping_is_stored_and_delivered(&one, &two, &format!("clara{n}"));
    }
    let healthy = support::wait_until(Duration::from_secs(5), || one.get("/healthz").status == 200);
    assert!(healthy.is_ok(), "{}", one.get("/healthz").body);
}
