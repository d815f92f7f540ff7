//! The `contact-checks` threads: which of a new stream's users its watcher may see
//! (`WATCH_POLICY=contacts`), asked of the store off the stream's own thread.
//!
//! A Redis call on a stream's thread leaves its stack and heap larger for the stream's whole
//! life (measured, 10,000 streams of 100 users: 28.8 KiB a stream with the check made there,
//! against 21.0 under `open`), the reason [`cached`](super::cached) reads are made elsewhere
//! too. So a stream hands its check to these few threads and waits for the answer. Each check
//! has the store's deadline: one still queued when its deadline has passed is answered
//! `TimedOut` without being made, so a Redis that went away costs a reconnect storm a fast
//! `503`, not a queue of timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Store, StoreError};
use crate::worker::Worker;

/// Threads making checks: Redis runs one command at a time, so a few keep it busy while one
/// waits for its answer.
const THREADS: usize = 4;
/// Most checks made in one round trip.
const BATCH: usize = 32;

/// Where streams ask which of their users the watcher may see.
#[derive(Clone)]
pub struct ContactChecks {
    requests: Sender<Ask>,
    /// How long a check may take, queued and made: the store's timeout.
    timeout: Duration,
}

enum Ask {
    Check(Check),
    /// Stop one thread, at shutdown.
    Stop,
}

struct Check {
    watcher: String,
    users: Vec<String>,
    deadline: Instant,
    reply: Sender<Result<Vec<String>, StoreError>>,
}

impl ContactChecks {
    /// Starts the threads, which ask `store`; a check takes at most about `timeout`.
    pub fn start(
        store: Arc<dyn Store>,
        timeout: Duration,
    ) -> std::io::Result<(ContactChecks, Vec<Worker>)> {
        let (requests, queue) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(THREADS);
        for n in 0..THREADS {
            let (store, queue, stop) = (Arc::clone(&store), queue.clone(), requests.clone());
            workers.push(Worker::spawn(
                format!("contact-checks-{n}"),
                move || run(store.as_ref(), &queue),
                move || drop(stop.send(Ask::Stop)),
            )?);
        }
        Ok((ContactChecks { requests, timeout }, workers))
    }

    /// Those of `users` that `watcher` may see ([`Store::allowed`]), in order. Out of line: it
    /// runs on what becomes a stream's thread, whose stack pages stay.
    #[inline(never)]
    pub fn check(&self, watcher: &str, users: Vec<String>) -> Result<Vec<String>, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let check = Check {
            watcher: watcher.to_owned(),
            users,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        if self.requests.send(Ask::Check(check)).is_err() {
            return Err(StoreError::Stopped);
        }
        // The threads answer within the deadline, or soon after it for a check under way.
        answer
            .recv_timeout(self.timeout * 2)
            .unwrap_or(Err(StoreError::TimedOut))
    }
}

/// Makes the checks asked, those queued meanwhile together (up to [`BATCH`]), until stopped.
fn run(store: &dyn Store, queue: &Receiver<Ask>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(Ask::Check(first)) = queue.recv() {
        batch.push(first);
        let mut stop = false;
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(Ask::Check(check)) => batch.push(check),
                Ok(Ask::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let (due, late): (Vec<Check>, Vec<Check>) = batch.drain(..).partition(|c| now < c.deadline);
        for check in late {
            let _ = check.reply.send(Err(StoreError::TimedOut));
        }
        let asked: Vec<(&str, &[String])> = due
            .iter()
            .map(|c| (c.watcher.as_str(), c.users.as_slice()))
            .collect();
        match store.allowed_many(&asked) {
            Ok(answers) => {
                for (mut check, allowed) in due.into_iter().zip(answers) {
                    let mut allowed = allowed.into_iter();
                    check.users.retain(|_| allowed.next().unwrap_or(false));
                    // The stream may have given up waiting; nothing to do then.
                    let _ = check.reply.send(Ok(check.users));
                }
            }
            Err(e) => {
                for check in due {
                    let _ = check.reply.send(Err(e.clone()));
                }
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::presence::Rules;
    use crate::store::memory::MemoryStore;

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_check_keeps_the_users_the_watcher_may_see_and_fails_fast_once_stopped() {
        // The memory store has no contact sets: a watcher sees only themself.
        let store = Arc::new(MemoryStore::new(Hub::new(4), Rules::default()));
        let (checks, workers) = ContactChecks::start(store, Duration::from_secs(1)).unwrap();
        let seen = checks.check("w", users(&["a", "w", "b"])).unwrap();
        assert_eq!(seen, ["w"]);
        let late = ContactChecks {
            timeout: Duration::ZERO,
            ..checks.clone()
        };
        assert!(matches!(
            late.check("w", users(&["w"])),
            Err(StoreError::TimedOut)
        ));
        assert!(crate::worker::stop_all(workers).is_empty());
        let started = Instant::now();
        assert!(matches!(
            checks.check("w", users(&["w"])),
            Err(StoreError::Stopped)
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
