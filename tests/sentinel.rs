//! `REDIS=sentinel://...`: three real sentinels, a master and a replica, two heartbeat
//! instances. The master is killed: pings are a fast `503` until the replica is promoted, then
//! `200`; every subscriber on both instances gets what was pinged once the new master took
//! over, and both instances live on; `/healthz` names the master in use. The same again with
//! passwords on the sentinels and on the master, and again over TLS (`sentinels://`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::sentinel::{MASTER, Sentinels};
use support::{Heartbeat, Pki, Sse, SseItem};

/// `/healthz`'s `master`.
fn master_of(heartbeat: &Heartbeat) -> serde_json::Value {
    let health = heartbeat.get("/healthz");
    let body: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    body["master"].clone()
}

/// Reads `sse` until it has delivered `status`, within `within`.
fn receives(sse: &mut Sse, status: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let wanted = format!(r#""status":"{status}""#);
    while Instant::now() < deadline {
        match sse.next(deadline - Instant::now()) {
            Some(SseItem::Data(data)) if data.contains(&wanted) => return true,
            Some(SseItem::End) | None => return false,
            _ => {}
        }
    }
    false
}

/// Pings `heartbeat` until it answers `200`, each `503` meanwhile answered within 1.5 s;
/// returns the time from `killed` to the `200`.
fn first_200(heartbeat: &Heartbeat, killed: Instant) -> Duration {
    loop {
        let asked = Instant::now();
        let reply = heartbeat.ping("sam0", "during");
        let took = asked.elapsed();
        if reply.status == 200 {
            return killed.elapsed();
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(took < Duration::from_millis(1500), "a 503 took {took:?}");
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no promotion in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the master under two instances and checks what the module says; returns the time
/// from the kill to the first ping answered `200`.
fn fails_over(password: Option<&str>, tls: bool) -> Duration {
    let pki = tls.then(Pki::new);
    let mut set = Sentinels::start(password, pki.as_ref());
    let scheme = if tls { "sentinels" } else { "sentinel" };
    let url = match password {
        // The master's own user and password, in the URL; the sentinels' in SENTINEL_PASSWORD.
        Some(_) => {
            let rule = support::redis::acl_rule("sentinel://:1/m");
            for server in &set.servers {
                let _: String = server.query(
                    redis::cmd("ACL")
                        .arg("SETUSER")
                        .arg("hb")
                        .arg("on")
                        .arg(">master-pw")
                        .arg(&rule),
                );
            }
            format!("{scheme}://hb:master-pw@{}/{MASTER}", set.hosts())
        }
        None => format!("{scheme}://{}/{MASTER}", set.hosts()),
    };
    let ca = pki.as_ref().map(|pki| pki.file("ca.crt"));
    let mut env = vec![("REDIS", url.as_str()), ("REDIS_TIMEOUT_MS", "500")];
    if let Some(password) = password {
        env.push(("SENTINEL_PASSWORD", password));
    }
    if let Some(ca) = &ca {
        env.push(("REDIS_CA_FILE", ca));
    }
    let instances = [Heartbeat::start_with(&env), Heartbeat::start_with(&env)];
    let first = format!("127.0.0.1:{}", set.servers[0].port);
    for heartbeat in &instances {
        assert_eq!(master_of(heartbeat), serde_json::json!(first));
        assert!(
            heartbeat
                .logs()
                .contains(&format!("the master of {MASTER} is {first}"))
        );
    }
    let users: Vec<String> = (0..4).map(|n| format!("sam{n}")).collect();
    let mut streams: HashMap<(usize, String), Sse> = HashMap::new();
    for (i, heartbeat) in instances.iter().enumerate() {
        for user in &users {
            streams.insert(
                (i, user.clone()),
                heartbeat.subscribe(&format!("/subscribe/{user}")),
            );
        }
    }
    for user in &users {
        assert_eq!(instances[0].ping(user, "before").status, 200);
    }
    for sse in streams.values_mut() {
        assert!(receives(sse, "before", Duration::from_secs(5)));
    }
    set.wait_for_sync();

    let killed = Instant::now();
    set.servers[0].kill();
    // Until each instance follows the promotion, its pings are refused at once, never left
    // waiting. Each follows on its own: the other may be a moment behind.
    let followed: Vec<Duration> = instances
        .iter()
        .map(|heartbeat| first_200(heartbeat, killed))
        .collect();
    let failed_over = followed[0].min(followed[1]);
    eprintln!("failover: from the kill to the first 200 in {failed_over:?}");
    eprintln!("failover: each instance's first 200 at {followed:?}");
    let apart = followed[0].abs_diff(followed[1]);
    assert!(apart < Duration::from_secs(2), "{followed:?}");

    // What is pinged on either instance reaches every subscriber on both.
    for (n, user) in users.iter().enumerate() {
        let reply = instances[n % 2].ping(user, "after");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for ((i, user), sse) in &mut streams {
        assert!(
            receives(sse, "after", Duration::from_secs(10)),
            "instance {i} missed {user}'s ping:\n{}",
            instances[*i].logs()
        );
    }
    let second = format!("127.0.0.1:{}", set.servers[1].port);
    for heartbeat in &instances {
        assert!(!heartbeat.exited());
        let named = support::wait_until(Duration::from_secs(5), || {
            master_of(heartbeat) == serde_json::json!(second)
        });
        assert!(named.is_ok(), "{}", heartbeat.get("/healthz").body);
        assert_eq!(heartbeat.get("/healthz").status, 200);
    }
    failed_over
}

#[test]
fn a_failover_is_followed_by_both_instances_and_no_ping_is_lost() {
    fails_over(None, false);
}

#[test]
fn a_failover_is_followed_with_passwords_on_the_sentinels_and_the_master() {
    fails_over(Some("sentinel-pw"), false);
}

#[test]
fn a_failover_is_followed_over_tls_to_the_sentinels_and_the_servers() {
    fails_over(Some("sentinel-pw"), true);
}
