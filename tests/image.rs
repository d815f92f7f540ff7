//! The image as it ships: the Dockerfile's final stage built with buildah, its builder stage
//! supplied (`--build-context build=DIR`) by the static binary the suite runs, and the image
//! run with podman. `/healthz` answers, `podman healthcheck run` passes, the process runs as
//! uid 10001, Redis is reached by a host name given with `--add-host`, and SIGTERM ends the
//! container with status 0 within 2 s. Images and containers live in a storage root of the
//! test's own, removed with it.
//!
//! Skipped outside CI when the binary is not static or buildah, podman or runc is missing;
//! CI (`.ci/run`) installs them and runs it.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Redis, Reply, TempDir, free_port, key_prefix, read_reply, wait_until};

/// buildah and podman on the test's own storage, as this machine runs them (no daemon, the
/// vfs driver, runc, cgroupfs).
struct Engine {
    dir: TempDir,
}

impl Engine {
    fn storage(&self) -> [String; 6] {
        let root = self.dir.0.join("storage");
        let runroot = self.dir.0.join("run");
        [
            "--root".into(),
            root.display().to_string(),
            "--runroot".into(),
            runroot.display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    fn buildah(&self, args: &[&str]) -> Output {
        run(Command::new("buildah").args(self.storage()).args(args))
    }

    fn podman(&self, args: &[&str]) -> Output {
        let mut podman = Command::new("podman");
        podman.args(self.storage());
        podman.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        run(podman.args(args))
    }
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the container however the test ends.
struct Container<'a> {
    engine: &'a Engine,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

fn get(port: u16, path: &str) -> std::io::Result<Reply> {
    let mut socket = TcpStream::connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    read_reply(&mut BufReader::new(socket))
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_image_builds_and_runs_as_it_ships() {
    let binary = support::binary();
    let tools = ["buildah", "podman", "runc"].iter().all(|p| on_path(p));
    let why = format!(
        "needs buildah, podman and runc (apt-get install -y buildah podman runc) and a static \
         HEARTBEAT_BIN (this is {binary:?})"
    );
    if !support::runs_here(tools && support::is_static(&binary), &why) {
        return;
    }
    let engine = Engine {
        dir: TempDir::new("image"),
    };
    // The builder stage's output, where the Dockerfile copies it from.
    let build = engine.dir.0.join("build");
    std::fs::create_dir_all(build.join("src/target/release")).unwrap();
    std::fs::copy(&binary, build.join("src/target/release/heartbeat")).unwrap();
    let tag = format!("localhost/heartbeat-test:{}", std::process::id());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = format!("build={}", build.display());
    let dockerfile = repo.join("Dockerfile");
    let built = engine.buildah(&[
        "bud",
        "--format",
        "docker",
        "--build-context",
        &context,
        "--file",
        dockerfile.to_str().unwrap(),
        "--tag",
        &tag,
        repo.to_str().unwrap(),
    ]);
    ok(&built, "buildah bud");

    let redis = Redis::start();
    let port = free_port();
    let name = format!("heartbeat-test-{}", std::process::id());
    let container = Container {
        engine: &engine,
        name: name.clone(),
    };
    let (listen, store) = (
        format!("LISTEN=127.0.0.1:{port}"),
        format!("REDIS=redis-box:{}", redis.port),
    );
    let prefix = format!("KEY_PREFIX={}", key_prefix());
    let started = engine.podman(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        "--add-host",
        "redis-box:127.0.0.1",
        "--env",
        &listen,
        "--env",
        &store,
        "--env",
        &prefix,
        &tag,
    ]);
    ok(&started, "podman run");

    let up = wait_until(Duration::from_secs(10), || {
        get(port, "/healthz").is_ok_and(|r| r.status == 200)
    });
    // The container's stderr, where heartbeat logs, is podman's.
    let logs = || {
        let out = engine.podman(&["logs", &name]);
        ok(&out, "podman logs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(up.is_ok(), "/healthz did not answer 200:\n{}", logs());
    assert!(
        logs().contains("store: redis at redis://redis-box:"),
        "{}",
        logs()
    );
    ok(
        &engine.podman(&["healthcheck", "run", &name]),
        "podman healthcheck run",
    );

    let pid = ok(
        &engine.podman(&["inspect", "--format", "{{.State.Pid}}", &name]),
        "podman inspect",
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    let uid = uid.and_then(|ids| ids.split_whitespace().next());
    assert_eq!(uid, Some("10001"), "{status}");

    let began = Instant::now();
    ok(
        &engine.podman(&["kill", "--signal", "TERM", &name]),
        "podman kill",
    );
    let code = ok(&engine.podman(&["wait", &name]), "podman wait");
    let took = began.elapsed();
    assert_eq!(code, "0", "exit status:\n{}", logs());
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert!(
        logs().contains("signal 15 received: stopping"),
        "{}",
        logs()
    );
    drop(container);
}
