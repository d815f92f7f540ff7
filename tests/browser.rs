//! A real browser: headless Chromium opens `examples/presence.html`, whose one `EventSource`
//! reads heartbeat's stream of all its users across origins (CORS), and the page shows each
//! user online with the cached status, then the live one: two users, and fifty (more than the
//! six connections a browser holds per origin).
//!
//! The page is served from a port of the test's own, inside a harness page that reports what
//! the presence page shows (its rows' `data-` attributes) back to the test every 200 ms.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{Heartbeat, TempDir};

/// Debian's chromium, which `.ci/run` installs; the test fails saying how when it is missing.
fn chromium() -> &'static str {
    const PATH: &str = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(PATH).exists(),
        "chromium is missing: install it with `apt-get install -y chromium` (.ci/run does)"
    );
    PATH
}

/// Headless Chromium on `url`, in a process group of its own so that all of it can be ended.
struct Browser {
    child: Child,
    _profile: TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = TempDir::new("chromium");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Browser {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A site on a port of the test's own: the presence page, the harness around it, and
/// `POST /report` where the harness sends what the page shows.
struct Site {
    origin: String,
    last_report: Arc<Mutex<String>>,
}

impl Site {
    fn serve(heartbeat: &str, users: &str) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let presence = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/presence.html"
        ))
        .unwrap();
        let harness = format!(
            r#"<!doctype html><meta charset="utf-8">
<iframe id="page" src="/presence.html?base={heartbeat}&users={users}" width="900" height="400"></iframe>
<script>
setInterval(() => {{
  const doc = document.getElementById("page").contentDocument;
  if (!doc) return;
  const rows = [...doc.querySelectorAll("tr[data-user]")].map((r) =>
    ({{ user: r.dataset.user, state: r.dataset.state, status: r.dataset.status }}));
  fetch("/report", {{ method: "POST", body: JSON.stringify(rows) }});
}}, 200);
</script>"#
        );
        let last_report = Arc::new(Mutex::new(String::new()));
        let reports = Arc::clone(&last_report);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (presence, harness, reports) =
                    (presence.clone(), harness.clone(), Arc::clone(&reports));
                thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let (status, content) = match path.split('?').next().unwrap_or("") {
                        "/presence.html" => ("200 OK", presence),
                        "/harness.html" => ("200 OK", harness),
                        "/report" => {
                            *reports.lock() = String::from_utf8_lossy(&body).into_owned();
                            ("200 OK", String::new())
                        }
                        _ => ("404 Not Found", String::new()),
                    };
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{content}",
                        content.len()
                    );
                });
            }
        });
        Site {
            origin,
            last_report,
        }
    }

    /// Waits until the page shows `user` as `state` with `status`.
    fn wait_for(&self, user: &str, state: &str, status: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let report = self.last_report.lock().clone();
            let rows: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap_or_default();
            let shown = rows
                .iter()
                .any(|r| r["user"] == user && r["state"] == state && r["status"] == status);
            if shown {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {user} {state} with status {status:?}; it shows {report}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// heartbeat (memory mode) allowing a presence page for `users`, and the page's site.
fn heartbeat_and_page(users: &str) -> (Heartbeat, Site) {
    chromium();
    // The page's origin is only known once its port is bound: bind first, then start
    // heartbeat allowing it.
    let placeholder = TcpListener::bind("127.0.0.1:0").unwrap();
    let heartbeat_port = placeholder.local_addr().unwrap().port();
    drop(placeholder);
    let heartbeat_base = format!("http://127.0.0.1:{heartbeat_port}");
    let site = Site::serve(&heartbeat_base, users);
    let listen = format!("127.0.0.1:{heartbeat_port}");
    let heartbeat = Heartbeat::start_with(&[
        ("REDIS", "memory"),
        ("LISTEN", &listen),
        ("CORS_ORIGINS", &site.origin),
    ]);
    (heartbeat, site)
}

#[test]
fn a_browser_shows_a_user_online_with_the_cached_then_the_live_status() {
    let (heartbeat, site) = heartbeat_and_page("amy,bo");
    assert_eq!(heartbeat.ping("amy", "1").status, 200, "the cached ping");

    let _browser = Browser::open(&format!("{}/harness.html", site.origin));
    site.wait_for("amy", "online", "1", Duration::from_secs(20));
    site.wait_for("bo", "offline", "", Duration::from_secs(1));

    assert_eq!(heartbeat.ping("amy", "2").status, 200, "a live ping");
    site.wait_for("amy", "online", "2", Duration::from_secs(5));
    assert_eq!(heartbeat.ping("bo", "0").status, 200);
    site.wait_for("bo", "online", "0", Duration::from_secs(5));
}

#[test]
fn a_browser_watches_fifty_users_on_one_stream_cached_and_live() {
    let users: Vec<String> = (0..50).map(|i| format!("friend{i}")).collect();
    let (heartbeat, site) = heartbeat_and_page(&users.join(","));
    for user in &users {
        assert_eq!(heartbeat.ping(user, "1").status, 200, "the cached ping");
    }
    let _browser = Browser::open(&format!("{}/harness.html", site.origin));
    for user in &users {
        site.wait_for(user, "online", "1", Duration::from_secs(20));
    }
    for user in &users {
        assert_eq!(heartbeat.ping(user, "2").status, 200, "a live ping");
    }
    for user in &users {
        site.wait_for(user, "online", "2", Duration::from_secs(5));
    }
    let streams = heartbeat.get("/metrics").body;
    assert!(
        streams.lines().any(|l| l == "heartbeat_streams 1"),
        "one stream for all fifty:\n{streams}"
    );
}

#[test]
fn a_browser_shows_active_away_busy_and_offline_from_the_events_alone() {
    let (heartbeat, site) = heartbeat_and_page("alice,bob,carol,dave,erin");
    heartbeat.ping("alice", "0").assert_ok();
    heartbeat.ping("bob", "1").assert_ok();
    heartbeat.ping("carol", "3").assert_ok(); // invisible from the start: never seen
    heartbeat.ping("erin", "2").assert_ok();
    let _browser = Browser::open(&format!("{}/harness.html", site.origin));
    site.wait_for("alice", "online", "0", Duration::from_secs(20));
    site.wait_for("bob", "online", "1", Duration::from_secs(5));
    site.wait_for("erin", "online", "2", Duration::from_secs(5));
    site.wait_for("carol", "offline", "", Duration::from_secs(1));
    site.wait_for("dave", "offline", "", Duration::from_secs(1));

    // Bob signs out; carol shows herself, then hides again.
    heartbeat.leave("bob", "test").assert_ok();
    site.wait_for("bob", "offline", "1", Duration::from_secs(5));
    heartbeat.ping("carol", "0").assert_ok();
    site.wait_for("carol", "online", "0", Duration::from_secs(5));
    heartbeat.ping("carol", "3").assert_ok();
    site.wait_for("carol", "offline", "0", Duration::from_secs(5));
}
