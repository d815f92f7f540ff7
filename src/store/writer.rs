//! The `redis-writer` threads: pings stored through pipelines.
//!
//! Measured here: Redis with a pattern subscriber attached (every heartbeat instance has one)
//! runs about 33,000 unpipelined script calls a second, and 100,000 pipelined 16 deep. So ping
//! threads do not each make their own round trip: they queue their ping and wait, and each
//! writer thread takes everything queued and sends it as one pipeline on its own connection.
//! Each ping is still its own atomic `EVALSHA` (stored and published together); under light
//! load a batch is one ping, so nothing waits for company.
//!
//! Neither side spins: the queue is a mutex and a condition variable, and each ping's answer
//! is a one-shot slot that wakes its thread with `unpark`. (A crossbeam channel's receive
//! spins and then yields the CPU four times before it sleeps; on two cores shared by 30 ping
//! threads, each yield was a context switch, and they cost more than the pings themselves.)
//!
//! Every ping carries its deadline. A writer answers a ping whose deadline has passed with an
//! error instead of sending it, and gives a batch only the time its oldest ping has left, so a
//! ping is answered within about the Redis timeout even when Redis is frozen.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::{ConnectionLike, RedisError};

use super::StoreError;
use super::redis::{Connector, Link, unavailable};
use crate::metrics::Metrics;

/// Writer threads, each with one connection: two, so one batch can be on its way while the
/// replies of another are read.
const WRITERS: usize = 2;
/// Most pings in one pipeline.
const BATCH: usize = 128;
/// Pings that may wait for a writer; more are refused as busy.
const QUEUE: usize = 8192;

/// One ping to store and publish.
struct Job {
    key: String,
    channel: String,
    time: u64,
    status: String,
    now_micros: u64,
    deadline: Instant,
    reply: Arc<Reply>,
}

/// Where a writer leaves one ping's result for the thread waiting on it.
struct Reply {
    result: OnceLock<Result<u64, StoreError>>,
    waiter: Thread,
}

impl Reply {
    fn new() -> Arc<Reply> {
        Arc::new(Reply {
            result: OnceLock::new(),
            waiter: thread::current(),
        })
    }

    fn send(&self, result: Result<u64, StoreError>) {
        if self.result.set(result).is_ok() {
            self.waiter.unpark();
        }
    }

    /// The result, or `None` if none came by `deadline`. Called by the waiter only.
    fn wait(&self, deadline: Instant) -> Option<Result<u64, StoreError>> {
        loop {
            if let Some(result) = self.result.get() {
                return Some(result.clone());
            }
            // A wake-up meant for something else only costs another look.
            thread::park_timeout(deadline.checked_duration_since(Instant::now())?);
        }
    }
}

/// The pings waiting for a writer.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Set when the `Writers` handle is dropped: the writers stop once the queue is empty.
    closed: bool,
}

impl Queue {
    fn push(&self, job: Job) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(StoreError::Unavailable("the Redis writers stopped".into()));
        }
        if state.jobs.len() >= QUEUE {
            return Err(StoreError::Busy);
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Up to `BATCH` pings, waiting for the first; `None` once closed and empty.
    fn take(&self, batch: &mut Vec<Job>) -> Option<()> {
        let mut state = self.state.lock();
        while state.jobs.is_empty() {
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
        let n = state.jobs.len().min(BATCH);
        batch.extend(state.jobs.drain(..n));
        Some(())
    }
}

/// The ping side of the writers: queues a ping and waits for its sequence number.
pub struct Writers {
    queue: Arc<Queue>,
}

impl Writers {
    pub fn start(
        connector: Arc<Connector>,
        script_hash: String,
        script_source: &'static str,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Writers> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        for n in 0..WRITERS {
            let writer = Writer {
                queue: Arc::clone(&queue),
                connector: Arc::clone(&connector),
                script_hash: script_hash.clone(),
                script_source,
                metrics: Arc::clone(&metrics),
                link: None,
            };
            thread::Builder::new()
                .name(format!("redis-writer-{n}"))
                .spawn(move || writer.run())?;
        }
        Ok(Writers { queue })
    }

    /// Stores and publishes a ping within `timeout`; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        key: String,
        channel: String,
        time: u64,
        status: &str,
        now_micros: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let deadline = Instant::now() + timeout;
        let reply = Reply::new();
        self.queue.push(Job {
            key,
            channel,
            time,
            status: status.to_owned(),
            now_micros,
            deadline,
            reply: Arc::clone(&reply),
        })?;
        // The writer answers every ping by its deadline; the grace covers scheduling only.
        reply
            .wait(deadline + Duration::from_millis(250))
            .unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "Redis did not answer in time".into(),
                ))
            })
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.queue.state.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

struct Writer {
    queue: Arc<Queue>,
    connector: Arc<Connector>,
    script_hash: String,
    script_source: &'static str,
    metrics: Arc<Metrics>,
    link: Option<Link>,
}

impl Writer {
    /// Sends batches until the `Writers` handle is gone and the queue is empty.
    fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        while self.queue.take(&mut batch).is_some() {
            let now = Instant::now();
            batch.retain(|job| {
                let live = job.deadline > now;
                if !live {
                    job.reply.send(Err(StoreError::Unavailable(
                        "Redis did not answer in time".into(),
                    )));
                }
                live
            });
            let Some(deadline) = batch.iter().map(|job| job.deadline).min() else {
                continue;
            };
            match self.send(&batch, deadline) {
                Ok(seqs) => {
                    for (job, seq) in batch.iter().zip(seqs) {
                        job.reply.send(Ok(seq));
                    }
                }
                Err(e) => {
                    Metrics::count(&self.metrics.redis_errors_total);
                    let error = unavailable(e);
                    for job in &batch {
                        job.reply.send(Err(error.clone()));
                    }
                }
            }
            batch.clear();
        }
    }

    /// Runs the batch as one pipeline. A reused connection whose server is gone, and a script
    /// cache that Redis lost (a restarted Redis has both), each get one more try: in both
    /// cases nothing ran.
    fn send(&mut self, batch: &[Job], deadline: Instant) -> Result<Vec<u64>, RedisError> {
        let mut reused = self.link.as_ref().is_some_and(|link| link.con.is_open());
        let mut loaded = false;
        loop {
            match self.try_send(batch, deadline) {
                Err(e) if reused && e.is_connection_dropped() => {
                    log::debug!("the writer's Redis connection was dropped ({e}); reconnecting");
                    reused = false;
                }
                Err(e)
                    if !loaded
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    let link = self.link.as_mut().expect("a connection answered NOSCRIPT");
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(self.script_source)
                        .query::<String>(&mut link.con)?;
                    loaded = true;
                }
                other => return other,
            }
        }
    }

    fn try_send(&mut self, batch: &[Job], deadline: Instant) -> Result<Vec<u64>, RedisError> {
        let mut link = self.connector.ready(self.link.take(), deadline)?;
        let mut pipe = redis::pipe();
        for job in batch {
            pipe.cmd("EVALSHA")
                .arg(&self.script_hash)
                .arg(1)
                .arg(&job.key)
                .arg(job.time)
                .arg(&job.status)
                .arg(&job.channel)
                .arg(job.now_micros);
        }
        let result = pipe.query::<Vec<u64>>(&mut link.con);
        // A server error (NOSCRIPT) leaves the connection usable; a broken one is dropped.
        if result.as_ref().map_or_else(|e| !e.is_io_error(), |_| true) {
            self.link = Some(link);
        }
        result
    }
}
