//! `--terminate`: after the pings, the server is sent SIGTERM with every stream still open,
//! and the load times how long until each stream's connection has closed and the process has
//! exited (a zombie counts: its parent, the script, reaps it later).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::Load;

/// How long the load waits for the streams and the process to end.
const LIMIT: Duration = Duration::from_secs(20);

/// What SIGTERM did.
pub(super) struct Terminated {
    /// Streams whose connection closed, and when the last of them did.
    pub(super) closed: usize,
    pub(super) last_closed: Option<Duration>,
    /// When the process was seen to have exited.
    pub(super) exited: Option<Duration>,
}

/// Whether process `pid` has exited: gone, or a zombie.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

impl Load<'_> {
    /// Sends SIGTERM to `pid`, then reads every open stream to its end, for up to [`LIMIT`].
    pub(super) fn terminate(&mut self, pid: u32) -> Result<Terminated, String> {
        let mut open: Vec<bool> = self.streams.iter().map(|s| s.head_done).collect();
        let mut left = open.iter().filter(|o| **o).count();
        let began = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {pid} failed"));
        }
        let mut done = Terminated {
            closed: 0,
            last_closed: None,
            exited: None,
        };
        let mut chunk = [0u8; 4096];
        while began.elapsed() < LIMIT && (left > 0 || done.exited.is_none()) {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(5)))
                .map_err(|e| e.to_string())?;
            for event in &self.events {
                let i = event.token().0;
                let Some(stream) = self.streams.get_mut(i).filter(|_| open[i]) else {
                    continue;
                };
                let gone = loop {
                    match stream.socket.read(&mut chunk) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break true,
                    }
                };
                if gone {
                    open[i] = false;
                    left -= 1;
                    done.closed += 1;
                    done.last_closed = Some(began.elapsed());
                }
            }
            if done.exited.is_none() && exited(pid) {
                done.exited = Some(began.elapsed());
            }
        }
        Ok(done)
    }
}
