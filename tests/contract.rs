//! The OpenAPI contract (`openapi.yaml`), checked by schemathesis against the real binary on
//! a real Redis: every operation, with generated valid and invalid requests, must answer
//! without a 5xx, with a documented status, content type and headers, and a body (every
//! event of a stream included) that fits its schema.
//!
//! Streams are made to end after a second (`MAX_STREAM_SECS=1`) so that the tool can read
//! them whole. The request-schema checks (`positive_data_acceptance`,
//! `negative_data_rejection`) are left out: JSON Schema counts characters and heartbeat's
//! limits count bytes, so no schema can be exact for both.

mod support;

use std::process::Command;

use support::{Heartbeat, Redis};

/// The checks run on every response.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      missing_required_header,unsupported_method,allow_header_conformance";

#[test]
fn every_operation_keeps_the_openapi_contract() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let redis = Redis::start();
    let heartbeat = Heartbeat::start_with(&[("REDIS", &redis.addr()), ("MAX_STREAM_SECS", "1")]);
    seed(&heartbeat);
    run(&schemathesis, &heartbeat, &[]);
}

/// The same under `WATCH_POLICY=contacts` and low flood limits, so that the `401`s, both
/// `429`s and hidden users are generated and checked too.
#[test]
fn every_operation_keeps_the_contract_under_contacts_and_limits() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let redis = Redis::start();
    let heartbeat = Heartbeat::start_with(&[
        ("REDIS", &redis.addr()),
        ("MAX_STREAM_SECS", "1"),
        ("WATCH_POLICY", "contacts"),
        ("MAX_PINGS_PER_MINUTE", "3"),
        ("MAX_STREAMS_PER_WATCHER", "1"),
    ]);
    seed(&heartbeat);
    // Everyone may see two of the seeded users, so claimed streams carry their events.
    for user in ["0", "a"] {
        let key = format!("{}watchers:{user}", support::key_prefix());
        let _: i64 = redis.query(redis::cmd("SADD").arg(key).arg("*"));
    }
    // The claims the generator tends to pick (its shortest, and the schema's example) used up
    // their minute, so that their pings are answered 429.
    for claim in [
        r#"{"userid":"0"}"#,
        r#"{"userid":"0","clientid":"0"}"#,
        r#"{"userid":"alice","clientid":"phone"}"#,
    ] {
        for _ in 0..3 {
            heartbeat
                .post_ping(Some(claim), r#"{"status":"1"}"#)
                .assert_ok();
        }
    }
    // Most generated watchers are refused here by design (no claim: 401), which schemathesis
    // would report as the schema not matching the API's validation; every other warning stays.
    let warnings = ["--warnings", "missing_auth,missing_test_data"];
    run(&schemathesis, &heartbeat, &warnings);
    let refused = |reason: &str| {
        let name = format!("heartbeat_watch_refused_total{{reason=\"{reason}\"}}");
        heartbeat.sample(&name).unwrap_or(0.0)
    };
    let rate = heartbeat.sample("heartbeat_pings_refused_total{reason=\"rate_limited\"}");
    eprintln!(
        "figure: schemathesis under contacts: {} unclaimed, {} over the streams, {} over the pings",
        refused("no_claim"),
        refused("too_many_streams"),
        rate.unwrap_or(0.0)
    );
    assert!(refused("no_claim") > 0.0, "401s were generated");
    assert!(rate.unwrap_or(0.0) > 0.0, "429s were generated");
}

fn schemathesis() -> Option<std::path::PathBuf> {
    let schemathesis = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/schemathesis/bin/schemathesis"
    ));
    let missing = "schemathesis is missing: scripts/install-schemathesis.sh installs it";
    support::runs_here(schemathesis.exists(), missing).then(|| schemathesis.to_owned())
}

/// Cached pings for ids the generator often picks, so streams carry events to check; two of
/// them left, so their streams also carry an offline event.
fn seed(heartbeat: &Heartbeat) {
    for user in ["0", "00", "A", "a", "alice"] {
        heartbeat.ping(user, "1").assert_ok();
    }
    for user in ["0", "a"] {
        heartbeat.leave(user, "test").assert_ok();
    }
}

fn run(schemathesis: &std::path::Path, heartbeat: &Heartbeat, extra: &[&str]) {
    let dir = support::TempDir::new("schemathesis");
    let output = Command::new(schemathesis)
        .current_dir(&dir.0)
        .args(["run", concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")])
        .args(["--url", &format!("http://{}", heartbeat.addr)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "10", "--request-timeout", "5"])
        .args(extra)
        .arg("--no-color")
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Operations:") || l.contains("found"))
        .map(|l| l.trim().trim_matches('='))
        .collect();
    eprintln!("figure: schemathesis: {}", summary.join("; "));
    assert!(
        output.status.success(),
        "schemathesis found contract violations:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("No issues found"), "{report}");
    assert!(
        !heartbeat.exited(),
        "heartbeat survived:\n{}",
        heartbeat.logs()
    );
}
