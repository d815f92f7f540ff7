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
//! others' writers go on. What a writer does with replies (redirects, a lost script, `WAIT`'s
//! count) is in [`batch`]; it sends through [`Pipelines`], a Redis connection ([`link`]) or,
//! in its tests, a script.

mod batch;
mod link;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use redis::{RedisError, Value};

use self::batch::Writer;
use self::link::NodeLink;
use super::node::{Node, Router};
use super::schema::Record;
use super::script::RecordScript;
use crate::metrics::{Metrics, RedisCall};
use crate::store::StoreError;
use crate::worker::{self, Worker};

/// Writer threads per node, each with one connection: two, so one batch can be on its way
/// while the replies of another are read.
const WRITERS: usize = 2;
/// Pings that may wait for a node's writers; more are refused as busy.
const QUEUE: usize = 8192;

/// Where a writer sends its pipelines: a connection to its node, or a script in tests.
pub trait Pipelines: Send {
    /// Runs `pipe` before `deadline`: one reply per command that is not ignored, an error
    /// reply among them for a command Redis refused.
    fn run(&mut self, pipe: &redis::Pipeline, deadline: Instant) -> Result<Vec<Value>, RedisError>;
}

/// Makes the [`Pipelines`] of one writer of a node.
pub type Connect = dyn Fn(&Arc<Node>) -> Box<dyn Pipelines> + Send + Sync;

/// What a node's writer queue carries. A bounded queue allocates and touches all its slots
/// at once, so a ping travels boxed: 8,192 slots of 16 bytes rather than of a whole job
/// (measured: 1.4 MB of resident memory per node's queue, idle).
enum Message {
    /// A ping to store and publish.
    Job(Box<Job>),
    /// Stop: sent once per writer at shutdown.
    Stop,
}

/// One ping to store and publish, and where its answer goes.
struct Job {
    record: Record,
    deadline: Instant,
    reply: Sender<Result<Option<u64>, StoreError>>,
    /// Sent here by an `ASK`: the call goes after `ASKING`.
    asking: bool,
    redirects: u8,
}

impl Job {
    fn answer(&self, result: Result<Option<u64>, StoreError>) {
        let _ = self.reply.send(result);
    }
}

/// The ping side of the writers: queues a ping for its node and waits for its sequence
/// number.
pub struct Writers {
    registry: Arc<Registry>,
}

/// Where pings go, and each node's queue and threads: what every writer shares.
struct Registry {
    router: Arc<dyn Router>,
    connect: Arc<Connect>,
    /// Replicas that must confirm a batch (`WAIT`) before its pings are answered as stored.
    wait_replicas: u32,
    metrics: Arc<Metrics>,
    script: RecordScript,
    /// Each node's queue, by address; `None` once shutdown has taken them, after which no
    /// writer starts.
    nodes: Mutex<Option<HashMap<String, Queue>>>,
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
        script: RecordScript,
        metrics: &Arc<Metrics>,
    ) -> std::io::Result<(Writers, Worker)> {
        let connect: Arc<Connect> = Arc::new(|node| Box::new(NodeLink::new(node)));
        let metrics = Arc::clone(metrics);
        Writers::start_with(router, nodes, wait_replicas, metrics, script, connect)
    }

    /// Like [`Writers::start`], running `script` through what `connect` makes.
    fn start_with(
        router: Arc<dyn Router>,
        nodes: &[Arc<Node>],
        wait_replicas: u32,
        metrics: Arc<Metrics>,
        script: RecordScript,
        connect: Arc<Connect>,
    ) -> std::io::Result<(Writers, Worker)> {
        let registry = Arc::new(Registry {
            router,
            connect,
            wait_replicas,
            metrics,
            script,
            nodes: Mutex::new(Some(HashMap::new())),
        });
        for node in nodes {
            registry.queue(node, false).map_err(std::io::Error::other)?;
        }
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let group = Arc::clone(&registry);
        let worker = Worker::spawn(
            "redis-writers",
            move || {
                let _ = stopped.recv();
                let nodes = group.nodes.lock().take().unwrap_or_default();
                let workers = nodes.into_values().flat_map(|queue| queue.workers);
                let panicked = worker::stop_all(workers.collect());
                assert!(panicked.is_empty(), "writers panicked: {panicked:?}");
            },
            move || drop(stop),
        )?;
        Ok((Writers { registry }, worker))
    }

    /// Runs `record` within `timeout`, timing the call in
    /// `heartbeat_redis_call_duration_seconds`: the id of what it published, if anything.
    pub fn record(&self, record: Record, timeout: Duration) -> Result<Option<u64>, StoreError> {
        let began = Instant::now();
        let id = self.queue_and_wait(record, timeout);
        self.registry
            .metrics
            .redis_call(RedisCall::Record)
            .observe(began.elapsed());
        id
    }

    /// Queues the call for its node's writers and waits for its reply.
    fn queue_and_wait(&self, record: Record, timeout: Duration) -> Result<Option<u64>, StoreError> {
        let deadline = Instant::now() + timeout;
        let node = self.registry.router.node_for(record.key())?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job = Job {
            record,
            deadline,
            reply,
            asking: false,
            redirects: 0,
        };
        self.registry.send(&node, job)?;
        // The writer answers every ping by its deadline; the grace covers scheduling only.
        match answer.recv_deadline(deadline + Duration::from_millis(250)) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(StoreError::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::Stopped),
        }
    }
}

impl Registry {
    /// Queues `job` for `node`'s writers, starting them if need be; a job that cannot be
    /// queued is answered with the error.
    fn send(self: &Arc<Self>, node: &Arc<Node>, job: Job) -> Result<(), StoreError> {
        let (error, message) = match self.queue(node, true) {
            Ok(jobs) => match jobs.try_send(Message::Job(Box::new(job))) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(message)) => (StoreError::Busy, message),
                Err(TrySendError::Disconnected(message)) => (StoreError::Stopped, message),
            },
            Err(e) => (e, Message::Job(Box::new(job))),
        };
        if let Message::Job(job) = message {
            job.answer(Err(error.clone()));
        }
        Err(error)
    }

    /// `node`'s queue; its writer threads are started on first use, with the node's address
    /// in their names if `named` (not for a single Redis, whose URL may hold a password).
    /// Once shutdown has taken the queues, none is made.
    fn queue(
        self: &Arc<Self>,
        node: &Arc<Node>,
        named: bool,
    ) -> Result<Sender<Message>, StoreError> {
        let mut guard = self.nodes.lock();
        let nodes = guard.as_mut().ok_or(StoreError::Stopped)?;
        if let Some(queue) = nodes.get(&node.addr) {
            return Ok(queue.jobs.clone());
        }
        let (jobs, waiting) = crossbeam_channel::bounded(QUEUE);
        let mut workers = Vec::with_capacity(WRITERS);
        for n in 0..WRITERS {
            let writer = Writer::new(waiting.clone(), Arc::clone(node), Arc::clone(self));
            let stop = jobs.clone();
            let name = match named {
                true => format!("redis-writer-{n} {}", node.addr),
                false => format!("redis-writer-{n}"),
            };
            let spawned = Worker::spawn(
                name,
                move || writer.run(),
                // Queued behind the pings already waiting, which are answered first.
                move || drop(stop.send_timeout(Message::Stop, Duration::from_secs(1))),
            );
            match spawned {
                Ok(worker) => workers.push(worker),
                Err(e) => {
                    // Those already started end when their queue's senders go.
                    log::warn!("cannot start a writer for {}: {e}", node.addr);
                    drop(jobs);
                    worker::stop_all(workers);
                    return Err(StoreError::Busy);
                }
            }
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
