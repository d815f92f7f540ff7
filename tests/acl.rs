//! Least privilege: every suite already runs heartbeat as a Redis `default` user holding just
//! the rule `heartbeat acl-rule` prints (tests/support/redis.rs). Here, that rule with one
//! command taken away: the command refused shows in the log and in `/healthz` as a permission
//! error, not as Redis being unavailable, on one Redis and on a cluster.

mod support;

use std::time::Duration;

use support::{Cluster, Heartbeat, Redis, wait_until};

/// The rule heartbeat prints for `REDIS=mode` and the tests' prefix, without `+command`.
fn rule_without(mode: &str, command: &str) -> Vec<String> {
    let rule = support::redis::acl_rule(mode);
    let taken = format!("+{command}");
    assert!(rule.contains(&taken), "{rule:?} has {taken}");
    rule.into_iter().filter(|r| *r != taken).collect()
}

/// Makes the user `lacking` with `rule` on `redis`.
fn set_user(redis: &Redis, rule: &[String]) {
    let _: String = redis.query(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("lacking")
            .arg("on")
            .arg(">pw")
            .arg(rule),
    );
}

/// Waits for `/healthz` to say `permission_denied` naming `command`; returns its body.
fn health_names(heartbeat: &Heartbeat, command: &str) -> String {
    let mut body = String::new();
    let named = wait_until(Duration::from_secs(5), || {
        let health = heartbeat.get("/healthz");
        body = health.body;
        health.status == 503
            && body.contains(r#""cause":"permission_denied""#)
            && body.contains(&format!("'{command}'"))
    });
    assert!(named.is_ok(), "{body}\n{}", heartbeat.logs());
    body
}

#[test]
fn a_command_the_rule_lacks_is_a_permission_error_in_the_log_and_healthz() {
    let redis = Redis::start();
    set_user(&redis, &rule_without(":1", "evalsha"));
    let url = format!("redis://lacking:pw@127.0.0.1:{}", redis.port);
    let heartbeat = Heartbeat::start(&url);
    assert_eq!(
        heartbeat.get("/healthz").status,
        200,
        "PING and the feed work"
    );
    let reply = heartbeat.ping("lacy", "1");
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("permission denied") && reply.body.contains("'evalsha'"),
        "{}",
        reply.body
    );
    health_names(&heartbeat, "evalsha");
    heartbeat.wait_for_log("Redis refused a command");
    for _ in 0..10 {
        heartbeat.ping("lacy", "1");
    }
    assert_eq!(
        heartbeat.log_count("Redis refused a command"),
        1,
        "one line for many refusals"
    );

    // Without a read's command: /status is refused, and so is the health check.
    // (`-@all` in the rule takes back every command first.)
    set_user(&redis, &rule_without(":1", "hmget"));
    let reader = Heartbeat::start(&url);
    assert_eq!(reader.get("/status?user=lacy").status, 503);
    health_names(&reader, "hmget");
}

#[test]
fn a_cluster_feed_refused_its_subscription_is_a_permission_error() {
    let cluster = Cluster::start();
    let rule = rule_without("cluster://:1", "ssubscribe");
    for node in &cluster.nodes {
        set_user(node, &rule);
    }
    let url = format!("cluster://lacking:pw@{}", cluster.nodes[0].addr());
    let heartbeat = Heartbeat::launch_in(support::TempDir::new("lacking"), &[("REDIS", &url)]);
    let _stream = heartbeat.subscribe("/subscribe/clancy");
    let body = health_names(&heartbeat, "ssubscribe");
    assert!(body.contains("subscription down"), "{body}");
    heartbeat.wait_for_log("refused a subscription");
}
