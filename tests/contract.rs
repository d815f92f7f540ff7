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
    let schemathesis = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/schemathesis/bin/schemathesis"
    ));
    let missing = "schemathesis is missing: scripts/install-schemathesis.sh installs it";
    if !support::runs_here(schemathesis.exists(), missing) {
        return;
    }
    let redis = Redis::start();
    let heartbeat = Heartbeat::start_with(&[("REDIS", &redis.addr()), ("MAX_STREAM_SECS", "1")]);
    // Cached pings for ids the generator often picks, so streams carry events to check; two
    // of them left, so their streams also carry an offline event.
    for user in ["0", "00", "A", "a", "alice"] {
        heartbeat.ping(user, "1").assert_ok();
    }
    for user in ["0", "a"] {
        heartbeat.leave(user, "test").assert_ok();
    }
    let dir = support::TempDir::new("schemathesis");
    let output = Command::new(schemathesis)
        .current_dir(&dir.0)
        .args(["run", concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")])
        .args(["--url", &format!("http://{}", heartbeat.addr)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "10", "--request-timeout", "5"])
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
