//! The `redis-writer` threads: pings stored through pipelines, two threads per Redis node.
//!
//! Measured here: Redis with a pattern subscriber attached (every heartbeat instance has one)
//! runs about 33,000 unpipelined script calls a second, and 100,000 pipelined 16 deep. So ping
//! threads do not each make their own round trip: they queue their ping and wait, and each
//! writer thread takes everything queued and sends it as one pipeline on its own connection.
//! Each ping is still its own atomic `EVALSHA` (stored and published together); under light
//! load a batch is one ping, so nothing waits for company.
//!
//! The queue and the answers are crossbeam channels, whose receive spins and yields the CPU
//! a few times before it sleeps. That costs context switches, but it is also what lets pings
//! collect while a writer is idle: measured under wrk -c32, a mutex-and-condvar queue with
//! one-shot answers woke the writer at the first ping, cut the mean pipeline from ~17-35 to
//! ~16 pings, and took about 8% off the rate (38.5k -> 35.3k pings/s, alternated runs) for a
//! p99 under 2 ms instead of under 3.
//!
//! Every ping carries its deadline. A writer answers a ping whose deadline has passed with an
//! error instead of sending it, and gives a batch only the time its oldest ping has left, so a
//! ping is answered within about the Redis timeout even when Redis is frozen.
//!
//! Each node has its own two writer threads and queue (on a cluster, started when a ping first
//! goes to that master), so a shard that is down or frozen holds up only its own pings: the
//! others' writers go on. A ping answered `MOVED` or `ASK` is handed to the writers of the node
//! it was pointed to, within its deadline; a node that lost the script cache gets it loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use redis::{ConnectionLike, FromRedisValue, RedisError, Script, ServerErrorKind, Value};

use super::connect::{Link, timed_out, unavailable};
use super::node::{Node, Redirect, Router};
use super::schema::{Keys, RECORD_SCRIPT, Record};
use crate::metrics::{Metrics, RedisCall};
use crate::ping::LastPing;
use crate::store::StoreError;
use crate::worker::{self, Worker};

/// Writer threads per node, each with one connection: two, so one batch can be on its way
/// while the replies of another are read.
const WRITERS: usize = 2;
/// Most pings in one pipeline.
const BATCH: usize = 128;
/// Pings that may wait for a node's writers; more are refused as busy.
const QUEUE: usize = 8192;
/// Most times a ping is handed to another node (`MOVED`, `ASK`).
const REDIRECTS: u8 = 3;

/// What a node's writer queue carries.
enum Message {
    /// A ping to store and publish.
    Job(Job),
    /// Stop: sent once per writer at shutdown.
    Stop,
}

/// One ping to store and publish, and where its answer goes.
struct Job {
    record: Record,
    deadline: Instant,
    reply: Sender<Result<u64, StoreError>>,
    /// Sent here by an `ASK`: the call goes after `ASKING`.
    asking: bool,
    redirects: u8,
}

impl Job {
    fn answer(&self, result: Result<u64, StoreError>) {
        let _ = self.reply.send(result);
    }
}

/// The ping side of the writers: queues a ping for its node and waits for its sequence
/// number.
pub struct Writers {
    shared: Arc<Shared>,
}

/// What every writer thread shares: where pings go, and each node's queue and threads.
struct Shared {
    router: Arc<dyn Router>,
    /// Replicas that must confirm a batch (`WAIT`) before its pings are answered as stored.
    wait_replicas: u32,
    metrics: Arc<Metrics>,
    script_hash: String,
    nodes: Mutex<HashMap<String, Queue>>,
}

/// A node's writers.
struct Queue {
    jobs: Sender<Message>,
    workers: Vec<Worker>,
}

impl Writers {
    /// Writers for the nodes `router` names, started for each of `nodes` now and for any
    /// other node when a ping first goes there. The `redis-writers` worker stops and joins
    /// them all at shutdown.
    pub fn start(
        router: Arc<dyn Router>,
        nodes: &[Arc<Node>],
        wait_replicas: u32,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Writers, Worker)> {
        let shared = Arc::new(Shared {
            router,
            wait_replicas,
            metrics,
            script_hash: Script::new(RECORD_SCRIPT).get_hash().to_owned(),
            nodes: Mutex::new(HashMap::new()),
        });
        for node in nodes {
            shared.queue(node, false)?;
        }
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let group = Arc::clone(&shared);
        let worker = Worker::spawn(
            "redis-writers",
            move || {
                let _ = stopped.recv();
                let workers: Vec<Worker> = group
                    .nodes
                    .lock()
                    .drain()
                    .flat_map(|(_, queue)| queue.workers)
                    .collect();
                let panicked = worker::stop_all(workers);
                assert!(panicked.is_empty(), "writers panicked: {panicked:?}");
            },
            move || drop(stop),
        )?;
        Ok((Writers { shared }, worker))
    }

    /// Stores and publishes `user`'s ping (`status`, received at `now_micros`) within
    /// `timeout`, timing the call in `heartbeat_redis_call_duration_seconds`.
    pub fn record(
        &self,
        keys: &Keys,
        user: &str,
        status: &str,
        now_micros: u64,
        timeout: Duration,
    ) -> Result<LastPing, StoreError> {
        let record = Record::new(keys, user, status, now_micros);
        let time = record.time;
        let began = Instant::now();
        let seq = self.queue_and_wait(record, timeout);
        self.shared
            .metrics
            .redis_call(RedisCall::Record)
            .observe(began.elapsed());
        Ok(LastPing {
            seq: seq?,
            time,
            status: status.to_owned(),
        })
    }

    /// Queues the call for its node's writers and waits for the sequence number.
    fn queue_and_wait(&self, record: Record, timeout: Duration) -> Result<u64, StoreError> {
        let deadline = Instant::now() + timeout;
        let node = self.shared.router.node_for(record.key())?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job = Job {
            record,
            deadline,
            reply,
            asking: false,
            redirects: 0,
        };
        self.shared.send(&node, job)?;
        // The writer answers every ping by its deadline; the grace covers scheduling only.
        match answer.recv_deadline(deadline + Duration::from_millis(250)) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Err(timed_out()),
        }
    }
}

impl Shared {
    /// Queues `job` for `node`'s writers, starting them if need be; a job that cannot be
    /// queued is answered with the error.
    fn send(self: &Arc<Self>, node: &Arc<Node>, job: Job) -> Result<(), StoreError> {
        let (error, message) = match self.queue(node, true) {
            Ok(jobs) => match jobs.try_send(Message::Job(job)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(message)) => (StoreError::Busy, message),
                Err(TrySendError::Disconnected(message)) => (
                    StoreError::Unavailable("the Redis writers stopped".into()),
                    message,
                ),
            },
            Err(e) => (
                StoreError::Unavailable(format!("cannot start a writer: {e}")),
                Message::Job(job),
            ),
        };
        if let Message::Job(job) = message {
            job.answer(Err(error.clone()));
        }
        Err(error)
    }

    /// `node`'s queue; its writer threads are started on first use, with the node's address
    /// in their names if `named` (not for a single Redis, whose URL may hold a password).
    fn queue(self: &Arc<Self>, node: &Arc<Node>, named: bool) -> std::io::Result<Sender<Message>> {
        let mut nodes = self.nodes.lock();
        if let Some(queue) = nodes.get(&node.addr) {
            return Ok(queue.jobs.clone());
        }
        let (jobs, waiting) = crossbeam_channel::bounded(QUEUE);
        let mut workers = Vec::with_capacity(WRITERS);
        for n in 0..WRITERS {
            let writer = Writer {
                queue: waiting.clone(),
                node: Arc::clone(node),
                shared: Arc::clone(self),
                link: None,
            };
            let stop = jobs.clone();
            let name = match named {
                true => format!("redis-writer-{n} {}", node.addr),
                false => format!("redis-writer-{n}"),
            };
            workers.push(Worker::spawn(
                name,
                move || writer.run(),
                // Queued behind the pings already waiting, which are answered first.
                move || drop(stop.send_timeout(Message::Stop, Duration::from_secs(1))),
            )?);
        }
        nodes.insert(
            node.addr.clone(),
            Queue {
                jobs: jobs.clone(),
                workers,
            },
        );
        Ok(jobs)
    }
}

/// What became of one ping sent in a pipeline.
enum Outcome {
    Done,
    /// Send it again here, once the script is loaded.
    Reload(Job),
}

/// One writer thread of one node.
struct Writer {
    queue: Receiver<Message>,
    node: Arc<Node>,
    shared: Arc<Shared>,
    link: Option<Link>,
}

impl Writer {
    /// Sends batches until it takes a stop message or every sender is gone.
    fn run(mut self) {
        let mut stopping = false;
        while !stopping && let Ok(first) = self.queue.recv() {
            let mut batch = Vec::with_capacity(8);
            let mut next = Some(first);
            // A stop message ends the batch: the one behind it is another writer's.
            while let Some(message) = next {
                match message {
                    Message::Job(job) => batch.push(job),
                    Message::Stop => {
                        stopping = true;
                        break;
                    }
                }
                next = (batch.len() < BATCH)
                    .then(|| self.queue.try_recv().ok())
                    .flatten();
            }
            self.send_batch(batch);
        }
    }

    /// Runs the batch as one pipeline and settles each ping; a batch whose node lost the
    /// script is sent once more after loading it.
    fn send_batch(&mut self, mut batch: Vec<Job>) {
        for round in 0..2 {
            let now = Instant::now();
            batch.retain(|job| {
                let live = job.deadline > now;
                if !live {
                    job.answer(Err(timed_out()));
                }
                live
            });
            let Some(deadline) = batch.iter().map(|job| job.deadline).min() else {
                return;
            };
            let (replies, shortfall) = match self.send(&batch, deadline) {
                Ok(mut replies) => {
                    let shortfall = self.shortfall(&mut replies);
                    (replies, shortfall)
                }
                Err(e) => {
                    Metrics::count(&self.shared.metrics.redis_errors_total);
                    self.shared.router.failed(&self.node);
                    let error = unavailable(e);
                    for job in &batch {
                        job.answer(Err(error.clone()));
                    }
                    return;
                }
            };
            let mut again = Vec::new();
            for (job, reply) in batch.into_iter().zip(replies) {
                if let Outcome::Reload(job) = self.settle(job, reply, shortfall.as_deref()) {
                    again.push(job);
                }
            }
            if again.is_empty() {
                return;
            }
            let loaded = match round {
                0 => self.load_script(deadline).map_err(unavailable),
                _ => Err(StoreError::Unavailable(
                    "Redis lost the script again after loading it".into(),
                )),
            };
            if let Err(error) = loaded {
                for job in &again {
                    job.answer(Err(error.clone()));
                }
                return;
            }
            batch = again;
        }
    }

    /// Takes the `WAIT` reply (if one was asked for) off the end of the batch's replies; if
    /// fewer replicas confirmed than asked, says so, for each stored ping's refusal.
    fn shortfall(&self, replies: &mut Vec<Value>) -> Option<String> {
        let wanted = self.shared.wait_replicas;
        if wanted == 0 {
            return None;
        }
        match replies.pop() {
            Some(Value::Int(n)) if n >= i64::from(wanted) => None,
            Some(Value::Int(n)) => Some(format!(
                "stored on the master, but {n} of {wanted} replicas confirmed it in time"
            )),
            other => Some(format!("WAIT answered {other:?}")),
        }
    }

    /// Answers the ping from its reply (refused, if it was stored but `shortfall` says too
    /// few replicas confirmed it), hands it to the node a redirect names, or keeps it to send
    /// again after loading the script.
    fn settle(&self, mut job: Job, reply: Value, shortfall: Option<&str>) -> Outcome {
        let error = match (reply, shortfall) {
            (Value::ServerError(error), _) => error,
            (_, Some(why)) => {
                job.answer(Err(StoreError::Unavailable(why.to_owned())));
                return Outcome::Done;
            }
            (value, None) => {
                let seq = u64::from_redis_value(value).map_err(|e| {
                    StoreError::Unavailable(format!("unexpected reply from Redis: {e}"))
                });
                job.answer(seq);
                return Outcome::Done;
            }
        };
        if error.kind() == Some(ServerErrorKind::NoScript) {
            return Outcome::Reload(job);
        }
        let router = &self.shared.router;
        let redirect = match Redirect::of(&error) {
            Some(Redirect::Moved(slot, addr)) => router.moved(slot, addr).map(|to| (to, false)),
            Some(Redirect::Ask(addr)) => router.node_at(addr).map(|to| (to, true)),
            None => None,
        };
        match redirect {
            Some((to, asking)) if job.redirects < REDIRECTS => {
                job.asking = asking;
                job.redirects += 1;
                if let Err(e) = self.shared.send(&to, job) {
                    log::debug!("a redirected ping could not be queued for {}: {e}", to.addr);
                }
            }
            _ => {
                Metrics::count(&self.shared.metrics.redis_errors_total);
                job.answer(Err(StoreError::Unavailable(format!(
                    "Redis refused the ping: {}",
                    error.to_string().replace(['\r', '\n'], " ")
                ))));
            }
        }
        Outcome::Done
    }

    /// Runs `batch` as one pipeline. A reused connection whose server is gone (a restarted
    /// Redis) gets one more try: nothing ran.
    fn send(&mut self, batch: &[Job], deadline: Instant) -> Result<Vec<Value>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in batch {
            if job.asking {
                pipe.cmd("ASKING").ignore();
            }
            job.record.add_to(&mut pipe, &self.shared.script_hash);
        }
        if self.shared.wait_replicas > 0 {
            // Three quarters of the time left, so the answer arrives before the read times out.
            let left = deadline.saturating_duration_since(Instant::now()) * 3 / 4;
            pipe.cmd("WAIT")
                .arg(self.shared.wait_replicas)
                .arg(left.as_millis().max(1) as u64);
        }
        let reused = self.link.as_ref().is_some_and(|link| link.con.is_open());
        match self.query(&pipe, deadline) {
            Err(e) if reused && e.is_connection_dropped() => {
                log::debug!(
                    "the writer's connection to {} was dropped ({e}); reconnecting",
                    self.node.addr
                );
                self.query(&pipe, deadline)
            }
            other => other,
        }
    }

    fn query<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
        deadline: Instant,
    ) -> Result<T, RedisError> {
        let mut link = self.node.connector.ready(self.link.take(), deadline)?;
        let result = pipe.query::<T>(&mut link.con);
        // A server error leaves the connection usable; a broken one is dropped.
        if result.as_ref().map_or_else(|e| !e.is_io_error(), |_| true) {
            self.link = Some(link);
        }
        result
    }

    fn load_script(&mut self, deadline: Instant) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(RECORD_SCRIPT);
        self.query::<(String,)>(&pipe, deadline).map(drop)
    }
}
