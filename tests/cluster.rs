//! `REDIS=cluster://...`: a real Redis Cluster of three masters with a replica each, and the
//! real binary. Pings of users in every shard reach streams on another instance; an instance
//! without streams receives no pings; a master killed fails over to its replica, and every
//! subscriber gets what it missed; a slot moved between masters keeps its pings flowing; a
//! frozen master holds up only its own shard; `REDIS_WAIT_REPLICAS` refuses what no replica
//! confirmed.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::{Cluster, Heartbeat, SOON, key_prefix, wait_until};

/// `?user=a&user=b...` for ids that need no encoding.
fn query(users: &[String]) -> String {
    let pairs: Vec<String> = users.iter().map(|u| format!("user={u}")).collect();
    format!("?{}", pairs.join("&"))
}

/// The hash heartbeat keeps `user`'s last ping in, on a cluster.
fn last_key(user: &str) -> String {
    format!("{}last:{{u:{user}}}", key_prefix())
}

/// The status in a user's stored presence, `"<seq> <time> <expires> <status>"`.
fn status_of(presence: Option<String>) -> Option<String> {
    Some(presence?.splitn(4, ' ').nth(3)?.to_owned())
}

/// One user id per master, unique to this run, named after `name`.
fn one_user_per_master(cluster: &Cluster, name: &str) -> Vec<String> {
    let mut by_master: HashMap<usize, String> = HashMap::new();
    for n in 0.. {
        let user = format!("{name}{n}-{}", std::process::id());
        by_master
            .entry(cluster.master_of(&last_key(&user)))
            .or_insert(user);
        if by_master.len() == 3 {
            break;
        }
    }
    let mut users: Vec<(usize, String)> = by_master.into_iter().collect();
    users.sort();
    users.into_iter().map(|(_, user)| user).collect()
}

/// Starts heartbeat on the cluster (logging at debug, shown if a test fails) and waits until
/// `/healthz` says every shard is up.
fn heartbeat_on(cluster: &Cluster) -> Heartbeat {
    heartbeat_on_with(cluster, &[])
}

/// `heartbeat_on`, with `env` added.
fn heartbeat_on_with(cluster: &Cluster, env: &[(&str, &str)]) -> Heartbeat {
    let url = cluster.url();
    let mut all = vec![("REDIS", url.as_str()), ("LOG_LEVEL", "debug")];
    all.extend_from_slice(env);
    let heartbeat = Heartbeat::start_with(&all);
    let healthy = wait_until(Duration::from_secs(10), || {
        heartbeat.get("/healthz").status == 200
    });
    assert!(
        healthy.is_ok(),
        "not healthy: {}",
        heartbeat.get("/healthz").body
    );
    heartbeat
}

/// Reads `n` events of a many-user stream: each user's `(id, status)`, the last one kept.
fn read_events(stream: &mut support::Sse, n: usize) -> HashMap<String, (u64, String)> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (id, (user, _, status)) = stream.expect_user_ping(Duration::from_secs(5));
        seen.insert(user, (id, status));
    }
    seen
}

fn feed_messages(heartbeat: &Heartbeat) -> f64 {
    heartbeat
        .sample("heartbeat_feed_messages_total")
        .expect("heartbeat_feed_messages_total in /metrics")
}

#[test]
fn pings_in_every_shard_reach_another_instance_and_an_instance_without_streams_gets_none() {
    let cluster = Cluster::start();
    let pinger = heartbeat_on(&cluster);
    let watcher = heartbeat_on(&cluster);
    let idle = heartbeat_on(&cluster);
    let health: serde_json::Value = serde_json::from_str(&watcher.get("/healthz").body).unwrap();
    assert_eq!(health["store"], "redis-cluster");
    let users = one_user_per_master(&cluster, "shard");
    let never = format!("never-{}", std::process::id());

    // Cached pings: stored before the stream opens, one in each shard.
    for user in &users {
        pinger.ping(user, "cached").assert_ok();
    }
    let mut watched = users.clone();
    watched.push(never.clone());
    let mut stream = watcher.subscribe(&format!("/subscribe{}", query(&watched)));
    assert_eq!(stream.head.status, 200);
    let cached = read_events(&mut stream, 3);
    assert_eq!(
        cached.keys().collect::<HashSet<_>>(),
        users.iter().collect::<HashSet<_>>()
    );
    assert!(cached.values().all(|(_, status)| status == "cached"));
    // The resync after each new subscription may repeat a cached ping; the stream skips
    // what it has sent already, so nothing else arrives.
    stream.expect_no_data(Duration::from_millis(300));
    let channels = wait_until(SOON, || {
        watcher.sample("heartbeat_feed_channels") == Some(watched.len() as f64)
    });
    assert!(
        channels.is_ok(),
        "the watcher holds one channel per watched user: {:?}",
        watcher.sample("heartbeat_feed_channels")
    );
    assert_eq!(idle.sample("heartbeat_feed_channels"), Some(0.0));

    // Live pings, from another instance, in every shard; the idle instance receives none.
    let idle_before = feed_messages(&idle);
    let watcher_before = feed_messages(&watcher);
    for round in 0..5 {
        for user in &users {
            pinger.ping(user, &format!("live{round}")).assert_ok();
        }
        let live = read_events(&mut stream, 3);
        for user in &users {
            assert_eq!(live[user].1, format!("live{round}"), "{user}");
            assert!(live[user].0 > cached[user].0);
        }
    }
    assert_eq!(feed_messages(&watcher) - watcher_before, 15.0);
    assert_eq!(
        feed_messages(&idle),
        idle_before,
        "an instance without streams subscribes to nothing"
    );
    assert_eq!(feed_messages(&pinger), 0.0);

    // /status reads every shard.
    let status: serde_json::Value =
        serde_json::from_str(&pinger.get(&format!("/status{}", query(&watched))).body).unwrap();
    for user in &users {
        assert_eq!(status[user]["status"], "live4", "{status}");
    }
    assert!(status[&never].is_null());

    // The last stream gone, its channels are let go.
    drop(stream);
    let released = wait_until(SOON, || {
        watcher.sample("heartbeat_feed_channels") == Some(0.0)
    });
    assert!(released.is_ok(), "channels left after the stream closed");
    pinger.ping(&users[0], "unwatched").assert_ok();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(feed_messages(&watcher) - watcher_before, 15.0);
}

#[test]
fn a_killed_master_fails_over_and_every_subscriber_gets_what_it_missed() {
    let mut cluster = Cluster::start();
    let one = heartbeat_on(&cluster);
    let two = heartbeat_on(&cluster);
    let users = one_user_per_master(&cluster, "failover");
    let victim = users[0].clone();
    let path = format!("/subscribe{}", query(&users));
    let mut streams = [one.subscribe(&path), two.subscribe(&path)];
    for user in &users {
        one.ping(user, "before").assert_ok();
    }
    for stream in &mut streams {
        let seen = read_events(stream, 3);
        assert!(seen.values().all(|(_, s)| s == "before"), "{seen:?}");
    }

    // A ping stored on the master and copied to its replica but never published, as one
    // published while a feed was down would be: only the resync after the feeds subscribe
    // at the new master can deliver it.
    let master = cluster.master_of(&last_key(&victim));
    let script = "redis.call('HSET', KEYS[1], 'p', ARGV[1] .. ' ' .. ARGV[2] .. ' ' \
                  .. string.format('%d', ARGV[1] + 60000000) .. ' missed')";
    let seq = now_micros();
    // WAIT counts the replicas that have this connection's writes, so the same connection.
    // (Run on another, it returned at once, and under load the replica promoted later had
    // not even the earlier pings: Redis replicates asynchronously.)
    let mut con = cluster.nodes[master].connection().unwrap();
    let (_, copied): ((), i64) = redis::pipe()
        .cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(last_key(&victim))
        .arg(seq)
        .arg(seq / 1_000_000)
        .cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut con)
        .unwrap();
    assert_eq!(copied, 1, "the replica has the missed ping");
    let replica = cluster.replica_of(master);
    let on_replica: (String, Option<String>) = redis::pipe()
        .cmd("READONLY")
        .cmd("HGET")
        .arg(last_key(&victim))
        .arg("p")
        .query(&mut cluster.nodes[replica].connection().unwrap())
        .unwrap();
    assert_eq!(status_of(on_replica.1).as_deref(), Some("missed"));

    let master_port = cluster.kill_master_of(&last_key(&victim));
    // While the shard is down: its pings are refused fast, the other shards' served.
    let began = Instant::now();
    let refused = one.ping(&victim, "during");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "refused in {:?}",
        began.elapsed()
    );
    for user in &users[1..] {
        let began = Instant::now();
        one.ping(user, "during").assert_ok();
        assert!(began.elapsed() < Duration::from_millis(500));
    }
    for stream in &mut streams {
        let seen = read_events(stream, 2);
        assert!(seen.values().all(|(_, s)| s == "during"), "{seen:?}");
    }
    let health = one.get("/healthz");
    assert_eq!(health.status, 503);
    assert!(
        health
            .body
            .contains(&format!("shard 127.0.0.1:{master_port}")),
        "{}",
        health.body
    );

    let took = cluster.wait_for_failover(&last_key(&victim), master_port);
    eprintln!("failover took {took:?}");
    for heartbeat in [&one, &two] {
        let healthy = wait_until(Duration::from_secs(10), || {
            heartbeat.get("/healthz").status == 200
        });
        assert!(healthy.is_ok(), "{}", heartbeat.get("/healthz").body);
    }
    // Shown if what follows fails.
    eprintln!(
        "instance one:\n{}\ninstance two:\n{}",
        one.logs(),
        two.logs()
    );
    // Both streams get the ping they missed, from the resync at the new master.
    for stream in &mut streams {
        let (id, (user, _, status)) = stream.expect_user_ping(Duration::from_secs(5));
        assert_eq!(
            (user, id, status),
            (victim.clone(), seq, "missed".to_owned())
        );
    }
    // And live pings of the shard again, on both instances.
    let served = wait_until(Duration::from_secs(5), || {
        one.ping(&victim, "after").status == 200
    });
    assert!(
        served.is_ok(),
        "pings of the failed-over shard are served again"
    );
    for stream in &mut streams {
        let seen = read_events(stream, 1);
        assert_eq!(seen[&victim].1, "after");
    }
    assert!(!one.exited() && !two.exited(), "both instances alive");
}

#[test]
fn a_slot_moved_between_masters_keeps_its_pings_stored_and_delivered() {
    let cluster = Cluster::start();
    let pinger = heartbeat_on(&cluster);
    let watcher = heartbeat_on(&cluster);
    let users = one_user_per_master(&cluster, "moved");
    let mover = users[0].clone();
    let mut stream = watcher.subscribe(&format!("/subscribe{}", query(&users)));
    pinger.ping(&mover, "before").assert_ok();
    assert_eq!(read_events(&mut stream, 1)[&mover].1, "before");

    // A ping while its key has moved but the slot has not (the old master answers ASK):
    // stored at the new master, published where nobody listens yet.
    let to = cluster.move_slot_of(&last_key(&mover), || {
        pinger.ping(&mover, "asked").assert_ok();
    });
    assert_eq!(cluster.master_of(&last_key(&mover)), to);
    // The watcher's feed, let go by the old master, subscribes at the new one and its
    // resync delivers the ping it could not hear.
    assert_eq!(read_events(&mut stream, 1)[&mover].1, "asked");
    // Live again: the pinger's stale map gets MOVED and follows it.
    for n in 0..3 {
        pinger.ping(&mover, &format!("moved{n}")).assert_ok();
        assert_eq!(read_events(&mut stream, 1)[&mover].1, format!("moved{n}"));
    }
    for user in &users[1..] {
        pinger.ping(user, "others").assert_ok();
    }
    let seen = read_events(&mut stream, 2);
    assert!(seen.values().all(|(_, s)| s == "others"), "{seen:?}");
    let stored: Option<String> =
        cluster.nodes[to].query(redis::cmd("HGET").arg(last_key(&mover)).arg("p"));
    assert_eq!(status_of(stored).as_deref(), Some("moved2"));
}

#[test]
fn a_frozen_master_delays_only_its_own_shards_pings() {
    let cluster = Cluster::start();
    let heartbeat = heartbeat_on_with(&cluster, &[("REDIS_TIMEOUT_MS", "500")]);
    let users = one_user_per_master(&cluster, "frozen");
    for user in &users {
        heartbeat.ping(user, "warm").assert_ok();
    }
    let frozen = cluster.master_of(&last_key(&users[0]));
    // Frozen (SIGSTOP) for well under the cluster's 2 s node timeout: no failover, just a
    // master that does not answer.
    cluster.nodes[frozen].pause();
    std::thread::scope(|scope| {
        // Enough pings of the frozen shard to keep every writer it has busy.
        let stuck: Vec<_> = (0..3)
            .map(|n| {
                std::thread::sleep(Duration::from_millis(10));
                let heartbeat = &heartbeat;
                let user = &users[0];
                scope.spawn(move || {
                    let began = Instant::now();
                    (heartbeat.ping(user, &format!("frozen{n}")), began.elapsed())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        for round in 0..5 {
            for user in &users[1..] {
                let began = Instant::now();
                heartbeat.ping(user, &format!("live{round}")).assert_ok();
                assert!(
                    began.elapsed() < Duration::from_millis(100),
                    "a ping of another shard took {:?}",
                    began.elapsed()
                );
            }
        }
        for ping in stuck {
            let (reply, took) = ping.join().unwrap();
            assert_eq!(reply.status, 503, "{}", reply.body);
            assert!(took < Duration::from_secs(1), "refused after {took:?}");
        }
    });
    cluster.nodes[frozen].resume();
    let served = wait_until(Duration::from_secs(5), || {
        heartbeat.ping(&users[0], "thawed").status == 200
    });
    assert!(served.is_ok(), "the thawed shard serves pings again");
}

#[test]
fn with_redis_wait_replicas_a_ping_its_replica_has_not_confirmed_is_refused() {
    let cluster = Cluster::start();
    let waits = heartbeat_on_with(
        &cluster,
        &[("REDIS_WAIT_REPLICAS", "1"), ("REDIS_TIMEOUT_MS", "500")],
    );
    let plain = heartbeat_on(&cluster);
    let users = one_user_per_master(&cluster, "wait");
    for user in &users {
        waits.ping(user, "confirmed").assert_ok();
    }
    let master = cluster.master_of(&last_key(&users[0]));
    let replica = cluster.replica_of(master);
    // Frozen for well under the node timeout: the master keeps serving, unconfirmed.
    cluster.nodes[replica].pause();
    let began = Instant::now();
    let refused = waits.ping(&users[0], "unconfirmed");
    let took = began.elapsed();
    let others: Vec<u16> = users[1..]
        .iter()
        .map(|user| waits.ping(user, "elsewhere").status)
        .collect();
    let without = plain.ping(&users[0], "not waited for");
    cluster.nodes[replica].resume();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("0 of 1 replicas"), "{}", refused.body);
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert_eq!(others, [200, 200], "the other shards' replicas confirm");
    assert_eq!(
        without.status, 200,
        "without REDIS_WAIT_REPLICAS: {}",
        without.body
    );
    let served = wait_until(Duration::from_secs(5), || {
        waits.ping(&users[0], "confirmed again").status == 200
    });
    assert!(served.is_ok(), "confirmed again once the replica is back");
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}
