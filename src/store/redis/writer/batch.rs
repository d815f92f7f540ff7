//! One writer thread of one node: takes what is queued as a batch, sends it as one pipeline,
//! and settles each ping from its reply. A reply may name another node (`MOVED`, `ASK`: the
//! ping goes to that node's queue within its deadline), say the node lost the script
//! (`NOSCRIPT`: loaded, and the batch sent once more), or come with `WAIT`'s count of the
//! replicas that have the batch.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use redis::{FromRedisValue, RedisError, ServerErrorKind, Value};

use super::{Job, Message, Pipelines, Registry};
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::redis::node::{Node, Redirect};

/// Most pings in one pipeline.
const MAX_BATCH: usize = 128;
/// Most times a ping is handed to another node (`MOVED`, `ASK`).
const REDIRECTS: u8 = 3;

/// What became of one ping sent in a pipeline.
enum Settled {
    Done,
    /// Send it again here, once the script is loaded.
    Reload(Job),
}

/// One writer thread of one node.
pub(super) struct Writer {
    queue: Receiver<Message>,
    node: Arc<Node>,
    registry: Arc<Registry>,
    pipelines: Box<dyn Pipelines>,
}

impl Writer {
    pub(super) fn new(
        queue: Receiver<Message>,
        node: Arc<Node>,
        registry: Arc<Registry>,
    ) -> Writer {
        let pipelines = (registry.connect)(&node);
        Writer {
            queue,
            node,
            registry,
            pipelines,
        }
    }

    /// Sends batches until it takes a stop message or every sender is gone.
    pub(super) fn run(mut self) {
        let mut stopping = false;
        while !stopping && let Ok(first) = self.queue.recv() {
            let mut batch = Vec::with_capacity(8);
            let mut next = Some(first);
            // A stop message ends the batch: the one behind it is another writer's.
            while let Some(message) = next {
                match message {
                    Message::Job(job) => batch.push(*job),
                    Message::Stop => {
                        stopping = true;
                        break;
                    }
                }
                next = (batch.len() < MAX_BATCH)
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
                    job.answer(Err(StoreError::TimedOut));
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
                    Metrics::count(&self.registry.metrics.redis_errors_total);
                    self.registry.router.failed(&self.node);
                    let error = StoreError::from(e);
                    for job in &batch {
                        job.answer(Err(error.clone()));
                    }
                    return;
                }
            };
            let mut again = Vec::new();
            for (job, reply) in batch.into_iter().zip(replies) {
                if let Settled::Reload(job) = self.settle(job, reply, shortfall.as_ref(), round) {
                    again.push(job);
                }
            }
            if again.is_empty() {
                return;
            }
            if let Err(e) = self.load_script(deadline) {
                let error = StoreError::from(e);
                for job in &again {
                    job.answer(Err(error.clone()));
                }
                return;
            }
            batch = again;
        }
    }

    /// Takes the `WAIT` reply (if one was asked for) off the end of the batch's replies; if
    /// fewer replicas confirmed than asked, the error each stored ping is refused with.
    fn shortfall(&self, replies: &mut Vec<Value>) -> Option<StoreError> {
        let wanted = self.registry.wait_replicas;
        if wanted == 0 {
            return None;
        }
        match replies.pop() {
            Some(Value::Int(n)) if n >= i64::from(wanted) => None,
            Some(Value::Int(confirmed)) => Some(StoreError::Unreplicated { confirmed, wanted }),
            Some(Value::ServerError(e)) => Some(e.into()),
            other => Some(StoreError::Refused(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "WAIT answered",
                format!("{other:?}"),
            )))),
        }
    }

    /// Answers the ping from its reply (refused, if it was stored but `shortfall` says too
    /// few replicas confirmed it), hands it to the node a redirect names, or, in the first
    /// `round`, keeps it to send again after loading the script.
    fn settle(
        &self,
        mut job: Job,
        reply: Value,
        shortfall: Option<&StoreError>,
        round: u8,
    ) -> Settled {
        let error = match (reply, shortfall) {
            (Value::ServerError(error), _) => error,
            (_, Some(shortfall)) => {
                job.answer(Err(shortfall.clone()));
                return Settled::Done;
            }
            (value, None) => {
                job.answer(Option::<u64>::from_redis_value(value).map_err(StoreError::from));
                return Settled::Done;
            }
        };
        if error.kind() == Some(ServerErrorKind::NoScript) && round == 0 {
            return Settled::Reload(job);
        }
        let router = &self.registry.router;
        let redirect = match Redirect::of(&error) {
            Some(Redirect::Moved(slot, addr)) => router.moved(slot, addr).map(|to| (to, false)),
            Some(Redirect::Ask(addr)) => router.node_at(addr).map(|to| (to, true)),
            None => None,
        };
        match redirect {
            Some((to, asking)) if job.redirects < REDIRECTS => {
                job.asking = asking;
                job.redirects += 1;
                if let Err(e) = self.registry.send(&to, job) {
                    log::debug!("a redirected ping could not be queued for {}: {e}", to.addr);
                }
            }
            _ => {
                Metrics::count(&self.registry.metrics.redis_errors_total);
                job.answer(Err(error.into()));
            }
        }
        Settled::Done
    }

    /// Runs `batch` as one pipeline, with `WAIT` at the end if replicas must confirm it.
    fn send(&mut self, batch: &[Job], deadline: Instant) -> Result<Vec<Value>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in batch {
            if job.asking {
                pipe.cmd("ASKING").ignore();
            }
            job.record.add_to(&mut pipe, &self.registry.script.sha);
        }
        if self.registry.wait_replicas > 0 {
            // Three quarters of the time left, so the answer arrives before the read times out.
            let left = deadline.saturating_duration_since(Instant::now()) * 3 / 4;
            pipe.cmd("WAIT")
                .arg(self.registry.wait_replicas)
                .arg(left.as_millis().max(1) as u64);
        }
        self.pipelines.run(&pipe, deadline)
    }

    fn load_script(&mut self, deadline: Instant) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.registry.script.text);
        let replies = self.pipelines.run(&pipe, deadline)?;
        match replies.into_iter().next() {
            Some(Value::ServerError(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::super::{Connect, Writers};
    use super::*;
    use crate::presence::Rules;
    use crate::store::redis::node::{Reach, Router};
    use crate::store::redis::schema::{Keys, Record};
    use crate::store::redis::script::RecordScript;
    use crate::worker::{self, Worker};

    /// What a scripted node answers to its next pipeline.
    enum Step {
        Replies(Vec<Value>),
        Fails(RedisError),
    }

    /// Nodes by address, each with the steps it answers and the pipelines it was sent.
    #[derive(Default)]
    struct Cluster {
        nodes: HashMap<String, Arc<Node>>,
        steps: Mutex<HashMap<String, VecDeque<Step>>>,
        sent: Mutex<Vec<(String, String)>>,
        moved: Mutex<Vec<(u16, String)>>,
        failed: Mutex<usize>,
        connections: Mutex<usize>,
    }

    impl Cluster {
        fn of(addrs: &[&str]) -> Arc<Cluster> {
            let mut cluster = Cluster::default();
            for addr in addrs {
                let reach = Reach {
                    pool_size: 1,
                    timeout: Duration::from_secs(1),
                    tls: None,
                };
                let node = Node::new(addr, &format!("redis://{addr}"), &reach);
                cluster
                    .nodes
                    .insert(addr.to_string(), Arc::new(node.unwrap()));
            }
            Arc::new(cluster)
        }

        fn answers(&self, addr: &str, step: Step) {
            self.steps
                .lock()
                .entry(addr.into())
                .or_default()
                .push_back(step);
        }

        /// What each pipeline sent carried, as (node, commands) with the arguments left out.
        fn sent(&self) -> Vec<(String, String)> {
            self.sent.lock().clone()
        }
    }

    impl Router for Cluster {
        fn node_for(&self, _key: &str) -> Result<Arc<Node>, StoreError> {
            Ok(Arc::clone(&self.nodes["a:1"]))
        }
        fn moved(&self, slot: u16, addr: &str) -> Option<Arc<Node>> {
            self.moved.lock().push((slot, addr.into()));
            self.nodes.get(addr).cloned()
        }
        fn node_at(&self, addr: &str) -> Option<Arc<Node>> {
            self.nodes.get(addr).cloned()
        }
        fn failed(&self, _node: &Node) {
            *self.failed.lock() += 1;
        }
    }

    /// One writer's connection to a scripted node.
    struct ScriptedLink {
        cluster: Arc<Cluster>,
        addr: String,
    }

    impl Pipelines for ScriptedLink {
        fn run(&mut self, pipe: &redis::Pipeline, _: Instant) -> Result<Vec<Value>, RedisError> {
            let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
            let commands: Vec<&str> = ["ASKING", "EVALSHA", "SCRIPT", "WAIT"]
                .into_iter()
                .flat_map(|c| {
                    std::iter::repeat_n(c, packed.matches(&format!("\r\n{c}\r\n")).count())
                })
                .collect();
            self.cluster
                .sent
                .lock()
                .push((self.addr.clone(), commands.join(" ")));
            let step = self
                .cluster
                .steps
                .lock()
                .get_mut(&self.addr)
                .and_then(|s| s.pop_front());
            match step.expect("a scripted answer for every pipeline") {
                Step::Replies(replies) => Ok(replies),
                Step::Fails(error) => Err(error),
            }
        }
    }

    fn writers(cluster: &Arc<Cluster>, wait_replicas: u32) -> (Writers, Worker) {
        let links = Arc::clone(cluster);
        let connect: Arc<Connect> = Arc::new(move |node: &Arc<Node>| {
            *links.connections.lock() += 1;
            Box::new(ScriptedLink {
                cluster: Arc::clone(&links),
                addr: node.addr.clone(),
            }) as Box<dyn Pipelines>
        });
        let router: Arc<dyn Router> = cluster.clone();
        let script = RecordScript::new(&Rules::default());
        Writers::start_with(router, &[], wait_replicas, Arc::default(), script, connect).unwrap()
    }

    /// A ping through the writers: the id its script call answered (nil is none).
    fn ping(writers: &Writers) -> Result<u64, StoreError> {
        let record = Record::new(
            &Keys::cluster("hb:"),
            "alice",
            "phone",
            Some("1"),
            1,
            60_000_000,
        );
        let id = writers.record(record, Duration::from_secs(2))?;
        Ok(id.unwrap_or(0))
    }

    fn error(reply: &str) -> Value {
        redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).unwrap()
    }

    fn stop(worker: Worker) {
        assert!(worker::stop_all(vec![worker]).is_empty());
    }

    #[test]
    fn a_stored_ping_is_answered_with_its_sequence_number() {
        let cluster = Cluster::of(&["a:1"]);
        cluster.answers("a:1", Step::Replies(vec![Value::Int(42)]));
        let (writers, worker) = writers(&cluster, 0);
        assert_eq!(ping(&writers).unwrap(), 42);
        assert_eq!(cluster.sent(), [("a:1".into(), "EVALSHA".into())]);
        stop(worker);
    }

    #[test]
    fn a_lost_script_is_loaded_and_the_ping_sent_again_once() {
        let cluster = Cluster::of(&["a:1"]);
        let noscript = || error("NOSCRIPT No matching script");
        cluster.answers("a:1", Step::Replies(vec![noscript()]));
        cluster.answers(
            "a:1",
            Step::Replies(vec![Value::SimpleString("sha".into())]),
        );
        cluster.answers("a:1", Step::Replies(vec![Value::Int(7)]));
        let (writers, worker) = writers(&cluster, 0);
        assert_eq!(ping(&writers).unwrap(), 7);
        let sent: Vec<String> = cluster.sent().into_iter().map(|(_, c)| c).collect();
        assert_eq!(sent, ["EVALSHA", "SCRIPT", "EVALSHA"]);

        // Lost again right after loading: refused, not sent a third time.
        for step in [noscript(), Value::SimpleString("sha".into()), noscript()] {
            cluster.answers("a:1", Step::Replies(vec![step]));
        }
        assert_eq!(ping(&writers).unwrap_err().cause(), "refused");
        assert_eq!(cluster.sent().len(), 6);
        stop(worker);
    }

    #[test]
    fn moved_and_ask_hand_the_ping_to_the_node_they_name() {
        let cluster = Cluster::of(&["a:1", "b:2"]);
        cluster.answers("a:1", Step::Replies(vec![error("MOVED 5797 b:2")]));
        cluster.answers("b:2", Step::Replies(vec![Value::Int(9)]));
        let (writers, worker) = writers(&cluster, 0);
        assert_eq!(ping(&writers).unwrap(), 9);
        assert_eq!(*cluster.moved.lock(), [(5797, "b:2".to_owned())]);

        cluster.answers("a:1", Step::Replies(vec![error("ASK 5797 b:2")]));
        cluster.answers("b:2", Step::Replies(vec![Value::Int(10)]));
        assert_eq!(ping(&writers).unwrap(), 10);
        let last = cluster.sent().pop().unwrap();
        assert_eq!(last, ("b:2".into(), "ASKING EVALSHA".into()));
        assert_eq!(cluster.moved.lock().len(), 1, "an ASK corrects no map");
        stop(worker);
    }

    #[test]
    fn a_ping_redirected_round_and_round_is_refused_as_moved() {
        let cluster = Cluster::of(&["a:1", "b:2"]);
        for _ in 0..2 {
            cluster.answers("a:1", Step::Replies(vec![error("MOVED 5797 b:2")]));
            cluster.answers("b:2", Step::Replies(vec![error("MOVED 5797 a:1")]));
        }
        let (writers, worker) = writers(&cluster, 0);
        let refused = ping(&writers).unwrap_err();
        assert_eq!(refused.cause(), "moved", "{refused}");
        assert_eq!(cluster.sent().len(), 1 + usize::from(REDIRECTS));
        stop(worker);
    }

    #[test]
    fn too_few_replicas_refuse_a_stored_ping() {
        let cluster = Cluster::of(&["a:1"]);
        cluster.answers("a:1", Step::Replies(vec![Value::Int(5), Value::Int(0)]));
        cluster.answers("a:1", Step::Replies(vec![Value::Int(6), Value::Int(1)]));
        let (writers, worker) = writers(&cluster, 1);
        let refused = ping(&writers).unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Unreplicated {
                    confirmed: 0,
                    wanted: 1
                }
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("0 of 1 replicas"), "{refused}");
        assert_eq!(ping(&writers).unwrap(), 6);
        assert_eq!(cluster.sent()[0].1, "EVALSHA WAIT");
        stop(worker);
    }

    #[test]
    fn a_failed_pipeline_refuses_its_pings_by_cause_and_marks_the_node() {
        let cluster = Cluster::of(&["a:1"]);
        let io = |kind| RedisError::from(std::io::Error::new(kind, "scripted"));
        cluster.answers("a:1", Step::Fails(io(std::io::ErrorKind::TimedOut)));
        cluster.answers(
            "a:1",
            Step::Fails(io(std::io::ErrorKind::ConnectionRefused)),
        );
        cluster.answers(
            "a:1",
            Step::Replies(vec![error("NOPERM no permissions to run 'evalsha'")]),
        );
        let (writers, worker) = writers(&cluster, 0);
        assert_eq!(ping(&writers).unwrap_err().cause(), "timed_out");
        assert_eq!(ping(&writers).unwrap_err().cause(), "unavailable");
        assert_eq!(ping(&writers).unwrap_err().cause(), "permission_denied");
        assert_eq!(
            *cluster.failed.lock(),
            2,
            "a refusal is no failure of the node"
        );
        stop(worker);
    }

    #[test]
    fn after_shutdown_no_writer_starts() {
        let cluster = Cluster::of(&["a:1"]);
        let (writers, worker) = writers(&cluster, 0);
        stop(worker);
        assert_eq!(ping(&writers).unwrap_err().cause(), "stopped");
        assert_eq!(*cluster.connections.lock(), 0, "no writer was made");
    }
}
