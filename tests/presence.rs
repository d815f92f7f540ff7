//! Presence against the real binary: a user's devices merged, invisible kept private, offline
//! announced on expiry and on leave, once, with ids that resume, on one Redis, in memory and
//! on a cluster.

mod support;

use std::time::{Duration, Instant};

use support::{AT_ONCE, Cluster, Heartbeat, Redis, SOON, Sse, now_secs};

/// One heartbeat in memory mode, and two on one Redis: each test's store modes.
fn instances(env: &[(&str, &str)]) -> (Option<Redis>, Vec<Heartbeat>) {
    let redis = Redis::start();
    let with = |store: &str| {
        let mut vars = vec![("REDIS", store)];
        vars.extend_from_slice(env);
        Heartbeat::start_with(&vars)
    };
    let (a, b) = (with(&redis.addr()), with(&redis.addr()));
    (Some(redis), vec![with("memory"), a, b])
}

#[test]
fn two_devices_alternating_away_and_active_show_active_on_every_event() {
    let (_redis, all) = instances(&[]);
    for heartbeat in &all[..2] {
        let mut sse = heartbeat.subscribe("/subscribe/ann");
        for _ in 0..3 {
            heartbeat.ping_from("ann", "laptop", "0").assert_ok();
            assert_eq!(sse.expect_ping(SOON).1, "0");
            heartbeat.ping_from("ann", "phone", "1").assert_ok();
            assert_eq!(sse.expect_ping(SOON).1, "0", "the phone's away ranks below");
        }
        // Do not disturb ranks first; with one device, its status is the user's.
        heartbeat.ping_from("ann", "tablet", "2").assert_ok();
        assert_eq!(sse.expect_ping(SOON).1, "2");
        heartbeat.ping_from("solo", "phone", "1").assert_ok();
        let status = heartbeat.get("/status?user=ann&user=solo");
        let body: serde_json::Value = serde_json::from_str(&status.body).unwrap();
        assert_eq!(body["ann"]["status"], "2");
        assert_eq!(body["ann"]["online"], true);
        assert_eq!(body["solo"]["status"], "1");
    }
}

#[test]
fn an_invisible_user_looks_offline_to_watchers_on_another_instance() {
    let (_redis, all) = instances(&[]);
    let (a, b) = (&all[1], &all[2]);
    let mut single = b.subscribe("/subscribe/cat");
    let mut multi = b.subscribe("/subscribe?user=cat&user=other");
    a.ping_from("cat", "phone", "0").assert_ok();
    let (time, _) = single.expect_ping(SOON);
    let (ping_id, _) = multi.expect_user_ping(SOON);

    a.ping_from("cat", "laptop", "3").assert_ok();
    let (offline_id, offline_time) = single.expect_offline(SOON);
    assert_eq!(offline_time, time, "the last visible time");
    assert_eq!(multi.expect_offline(SOON), (offline_id, time));
    assert!(offline_id > ping_id);
    let status = b.get("/status?user=cat");
    let expected = format!(r#"{{"cat":{{"online":false,"status":"0","time":{time}}}}}"#);
    assert_eq!(status.body.trim_end(), expected);

    // While invisible, nothing a watcher can see changes, whichever device pings.
    let metrics = b.get("/metrics").body;
    for _ in 0..5 {
        a.ping_from("cat", "phone", "0").assert_ok();
        b.ping_from("cat", "laptop", "3").assert_ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    single.expect_no_data(Duration::from_millis(300));
    multi.expect_no_data(Duration::from_millis(10));
    assert_eq!(
        b.get("/status?user=cat").body,
        status.body,
        "the same bytes"
    );
    let events = |m: &str| support::sample_in(m, "heartbeat_events_delivered_total");
    assert_eq!(events(&b.get("/metrics").body), events(&metrics));

    // Visible again: the next ping is delivered as usual.
    a.ping_from("cat", "laptop", "1").assert_ok();
    let (_, status) = single.expect_ping(SOON);
    assert_eq!(status, "0", "the phone's active, live again");
    assert!(single.id() > offline_id);
}

#[test]
fn invisible_in_memory_mode_too() {
    let heartbeat = Heartbeat::start("memory");
    let mut sse = heartbeat.subscribe("/subscribe/cat");
    heartbeat.ping_from("cat", "phone", "0").assert_ok();
    sse.expect_ping(SOON);
    heartbeat.ping_from("cat", "phone", "3").assert_ok();
    sse.expect_offline(SOON);
    heartbeat.ping_from("cat", "phone", "3").assert_ok();
    sse.expect_no_data(Duration::from_millis(300));
    heartbeat.ping_from("cat", "phone", "2").assert_ok();
    assert_eq!(sse.expect_ping(SOON).1, "2");
}

/// The time from `began` until `sse`'s next event, which must be an offline one: its id.
fn offline_after(sse: &mut Sse, began: Instant, within: Duration) -> (u64, Duration) {
    let (id, _) = sse.expect_offline(within);
    (id, began.elapsed())
}

#[test]
fn an_expiry_is_announced_once_on_every_instance_within_a_second() {
    let (_redis, all) = instances(&[("DEVICE_TTL_SECS", "1")]);
    let mut streams: Vec<Sse> = all.iter().map(|h| h.subscribe("/subscribe/eve")).collect();
    let mut pinged = Vec::new();
    for (i, heartbeat) in all.iter().enumerate().take(2) {
        let began = Instant::now();
        heartbeat.ping_from("eve", "phone", "0").assert_ok();
        pinged.push(began);
        streams[i].expect_ping(SOON);
        if i == 1 {
            streams[2].expect_ping(SOON);
        }
    }
    let ping_ids: Vec<u64> = streams.iter().map(Sse::id).collect();
    for (i, sse) in streams.iter_mut().enumerate() {
        let began = pinged[i.min(1)];
        let (id, after) = offline_after(sse, began, Duration::from_secs(3));
        assert_eq!(id, ping_ids[i] + 1_000_000, "the expiry's time is its id");
        assert!(
            after >= Duration::from_secs(1),
            "not before the expiry: {after:?}"
        );
        assert!(
            after <= Duration::from_secs(2),
            "within 1 s of it: {after:?}"
        );
        sse.expect_no_data(Duration::from_millis(300));
    }
}

#[test]
fn no_offline_while_another_device_still_pings() {
    let (_redis, all) = instances(&[("DEVICE_TTL_SECS", "1")]);
    for heartbeat in &all[..2] {
        let mut sse = heartbeat.subscribe("/subscribe/fay");
        heartbeat.ping_from("fay", "laptop", "2").assert_ok();
        sse.expect_ping(SOON);
        // Every event a ping: no offline while the phone keeps fay live.
        let began = Instant::now();
        let mut statuses = Vec::new();
        while began.elapsed() < Duration::from_millis(2500) {
            heartbeat.ping_from("fay", "phone", "1").assert_ok();
            statuses.push(sse.expect_ping(SOON).1);
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(
            statuses[0], "2",
            "the laptop's do not disturb, while it is live"
        );
        assert_eq!(statuses.last().unwrap(), "1", "the laptop has expired");
        offline_after(&mut sse, Instant::now(), Duration::from_secs(3));
    }
}

#[test]
fn a_leave_reaches_every_instance_in_under_100_ms_and_only_the_last_device_counts() {
    let (_redis, all) = instances(&[]);
    let (a, b) = (&all[1], &all[2]);
    let mut streams = [a.subscribe("/subscribe/gus"), b.subscribe("/subscribe/gus")];
    a.ping_from("gus", "phone", "1").assert_ok();
    a.ping_from("gus", "laptop", "0").assert_ok();
    for sse in &mut streams {
        sse.expect_ping(SOON);
        sse.expect_ping(SOON);
    }
    // The laptop leaves: the phone's away is what is left, and gus is still online.
    a.leave("gus", "laptop").assert_ok();
    for sse in &mut streams {
        assert_eq!(sse.expect_ping(SOON).1, "1");
    }
    let began = Instant::now();
    b.leave("gus", "phone").assert_ok();
    for sse in &mut streams {
        let (_, after) = offline_after(sse, began, SOON);
        assert!(after < Duration::from_millis(100), "{after:?}");
    }
    a.leave("gus", "phone").assert_ok();
    for sse in &mut streams {
        sse.expect_no_data(Duration::from_millis(200));
    }

    let memory = &all[0];
    let mut sse = memory.subscribe("/subscribe/gus");
    memory.ping_from("gus", "phone", "1").assert_ok();
    sse.expect_ping(SOON);
    memory.leave("gus", "phone").assert_ok();
    sse.expect_offline(AT_ONCE);
}

#[test]
fn a_resume_across_an_offline_neither_repeats_nor_misses_it() {
    let (_redis, all) = instances(&[("DEVICE_TTL_SECS", "1")]);
    for heartbeat in &all[..2] {
        let mut first = heartbeat.subscribe("/subscribe/hal");
        heartbeat.ping_from("hal", "phone", "0").assert_ok();
        first.expect_ping(SOON);
        let seen = first.id();
        drop(first);
        heartbeat.leave("hal", "phone").assert_ok();

        // Away while hal left: the offline comes, and the ping seen is not repeated.
        let mut resumed = heartbeat.resume("/subscribe/hal", seen);
        let (offline, _) = resumed.expect_offline(SOON);
        resumed.expect_no_data(Duration::from_millis(200));
        drop(resumed);
        let mut again = heartbeat.resume("/subscribe?user=hal", offline);
        again.expect_no_data(Duration::from_millis(300));
        heartbeat.ping_from("hal", "phone", "2").assert_ok();
        assert_eq!(again.expect_user_ping(SOON).1.2, "2");

        // An expiry's offline resumes the same way: its id is the expiry time.
        let (expired, _) = again.expect_offline(Duration::from_secs(3));
        drop(again);
        let mut after = heartbeat.resume("/subscribe/hal", expired);
        after.expect_no_data(Duration::from_millis(300));
        let mut before = heartbeat.resume("/subscribe/hal", expired - 1);
        assert_eq!(before.expect_offline(SOON).0, expired);
    }
}

#[test]
fn a_restarted_instance_shows_who_went_offline_while_it_was_down() {
    let redis = Redis::start();
    let env = [("REDIS", redis.addr()), ("DEVICE_TTL_SECS", "1".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stays = Heartbeat::start_with(&env);
    let mut restarted = Heartbeat::start_with(&env);
    let mut sse = restarted.subscribe("/subscribe?user=ida&user=jo&user=kim");
    stays.ping_from("ida", "phone", "0").assert_ok();
    stays.ping_from("jo", "phone", "1").assert_ok();
    for _ in 0..2 {
        sse.expect_user_ping(SOON);
    }
    restarted.signal_and_wait("TERM", SOON);
    stays.leave("jo", "phone").assert_ok();
    std::thread::sleep(Duration::from_millis(1500)); // ida's phone expires meanwhile
    stays.ping_from("kim", "phone", "2").assert_ok();
    let restarted = Heartbeat::start_with(&env);
    let mut sse = restarted.subscribe("/subscribe?user=ida&user=jo&user=kim");
    let mut got = Vec::new();
    for _ in 0..5 {
        let data = sse.expect_data(SOON);
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        let user = value["user"].as_str().unwrap().to_owned();
        got.push((user, sse.last_name.clone()));
    }
    got.sort();
    let named = |u: &str, n: Option<&str>| (u.to_owned(), n.map(str::to_owned));
    assert_eq!(
        got,
        [
            named("ida", None),
            named("ida", Some("offline")),
            named("jo", None),
            named("jo", Some("offline")),
            named("kim", None),
        ]
    );
    let status = restarted.get("/status?user=ida&user=jo&user=kim");
    let body: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let online: Vec<bool> = ["ida", "jo", "kim"]
        .iter()
        .map(|u| body[u]["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online, [false, false, true]);
    assert!(body["jo"]["time"].as_u64().unwrap().abs_diff(now_secs()) <= 5);
}

#[test]
fn a_leave_is_refused_as_a_ping_is() {
    let heartbeat = Heartbeat::start("memory");
    let no_claim = heartbeat.request(
        b"POST /leave HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    no_claim.assert_refused(400);
    let get = heartbeat.get("/leave");
    get.assert_refused(405);
    assert_eq!(get.header("allow"), Some("POST"));
    let fenced = Heartbeat::start_with(&[("REDIS", "memory"), ("TRUSTED_PROXIES", "10.9.9.9")]);
    let mut sse = fenced.subscribe("/subscribe/lev");
    fenced.leave("lev", "phone").assert_refused(403);
    sse.expect_no_data(Duration::from_millis(200));
}

#[test]
fn on_a_cluster_devices_merge_and_a_leave_announces_offline() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let a = Heartbeat::start_with(&[("REDIS", &url)]);
    let b = Heartbeat::start_with(&[("REDIS", &url)]);
    let users = ["mia", "ned", "ola", "pat", "quin"];
    for user in users {
        let mut sse = b.subscribe(&format!("/subscribe/{user}"));
        a.ping_from(user, "laptop", "0").assert_ok();
        assert_eq!(sse.expect_ping(SOON).1, "0");
        a.ping_from(user, "phone", "1").assert_ok();
        assert_eq!(sse.expect_ping(SOON).1, "0", "merged on {user}'s master");
        a.leave(user, "laptop").assert_ok();
        assert_eq!(sse.expect_ping(SOON).1, "1");
        a.leave(user, "phone").assert_ok();
        sse.expect_offline(SOON);
    }
}
