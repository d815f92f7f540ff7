//! Long-lived threads (the Redis writers and feed, cached reads, signals): each named, owned
//! by [`run`](crate::run) and, at shutdown, asked to stop and joined, so that a panic in any
//! of them is reported and not lost with a detached thread.

use std::io;
use std::thread::{self, JoinHandle};

/// A named thread and the way to ask it to stop. Dropped unjoined, its thread would run
/// on unowned and its panic go unreported: hand it to [`stop_all`].
#[must_use = "a worker must be stopped and joined with stop_all"]
pub struct Worker {
    handle: JoinHandle<()>,
    stop: Box<dyn FnOnce() + Send>,
}

impl Worker {
    /// Starts `body` on a thread called `name`. `stop` is called at shutdown and must make
    /// `body` return soon (send it a message, drop its sender, close what it waits on).
    pub fn spawn(
        name: impl Into<String>,
        body: impl FnOnce() + Send + 'static,
        stop: impl FnOnce() + Send + 'static,
    ) -> io::Result<Worker> {
        let handle = thread::Builder::new().name(name.into()).spawn(body)?;
        Ok(Worker {
            handle,
            stop: Box::new(stop),
        })
    }

    pub fn name(&self) -> &str {
        self.handle.thread().name().unwrap_or("unnamed")
    }
}

/// Asks every worker to stop, then joins them all; returns the names of those that panicked
/// (their panic message is already in the log, from the panic hook).
pub fn stop_all(workers: Vec<Worker>) -> Vec<String> {
    let mut handles = Vec::with_capacity(workers.len());
    for worker in workers {
        (worker.stop)();
        handles.push(worker.handle);
    }
    handles
        .into_iter()
        .filter_map(|handle| {
            let name = handle.thread().name().unwrap_or("unnamed").to_owned();
            handle.join().is_err().then(|| {
                log::error!("the {name} thread panicked");
                name
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_worker_is_stopped_and_joined_and_panics_are_named() {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let waits = Worker::spawn(
            "waits",
            move || {
                let _ = stopped.recv_timeout(Duration::from_secs(10));
            },
            move || drop(stop),
        )
        .unwrap();
        let panics = Worker::spawn("panics", || panic!("on purpose"), || {}).unwrap();
        assert_eq!(waits.name(), "waits");
        let started = std::time::Instant::now();
        assert_eq!(stop_all(vec![waits, panics]), ["panics"]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped, not timed out"
        );
    }
}
