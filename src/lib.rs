//! heartbeat: a small presence service. Clients ping it with a status; it keeps each user's
//! last ping in Redis (or in memory) and streams every new one, as Server-Sent Events, to
//! everyone watching that user, on every instance sharing the store.
//!
//! Synchronous and thread-per-connection: an accept loop ([`server`]) gives each connection
//! a thread that reads requests with our small HTTP layer ([`http`]), answers pings through
//! the [`store`] and, for a subscribe, streams events from the [`hub`] ([`stream`]).
//!
//! This file is the composition root: it configures, starts, waits and stops.

// No unsafe code but one `prctl` call, isolated in `futex`, and the epoll calls of `hangup`.
#![deny(unsafe_code)]

pub mod budget;
pub mod config;
pub mod flood;
pub mod futex;
pub mod hangup;
pub mod healthcheck;
pub mod http;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod ping;
pub mod presence;
pub mod routes;
pub mod server;
pub mod store;
pub mod stream;
pub mod worker;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::budget::SystemLimits;
use crate::config::{Config, ConfigError, StoreConfig};
use crate::hangup::Hangups;
use crate::http::Timeouts;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::server::{Server, Shared, Stopper};
use crate::store::cached::CachedReads;
use crate::store::contacts::ContactChecks;
use crate::store::denied::Denials;
use crate::store::memory::MemoryStore;
use crate::store::redis::cluster::ClusterStore;
use crate::store::redis::tls::Tls;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Store, StoreError};
use crate::stream::{Streams, Writing};
use crate::worker::Worker;

/// Says who may watch whom, and the flood limits, at start.
fn log_watching(config: &Config) {
    let pings = match config.max_pings_per_minute {
        Some(n) => format!("at most {n} pings a minute per device"),
        None => "no limit on pings".into(),
    };
    match config.watch_policy {
        config::WatchPolicy::Open => log::warn!(
            "WATCH_POLICY=open: any caller that reaches this port may watch any user and read \
             their last-seen; set claimed or contacts to decide who may ({pings})"
        ),
        policy => log::info!(
            "WATCH_POLICY={}: watchers are claimed, with at most {} streams each; streams end \
             after {}; {pings}",
            policy.name(),
            config.max_streams_per_watcher,
            config
                .max_stream
                .map_or("never".into(), |d| format!("{} s", d.as_secs())),
        ),
    }
}

/// Why the service could not start, or did not stop cleanly.
#[derive(Debug)]
pub enum Error {
    Config(ConfigError),
    /// The listening socket could not be bound.
    Listen(String, std::io::Error),
    /// A thread, the logger, the signal handler or the store's client (named) could not be
    /// set up.
    Setup(String, Box<dyn std::error::Error + Send + Sync>),
    /// These long-lived threads panicked (each panic is in the log).
    Panicked(Vec<String>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Error::Setup(what, e) => write!(f, "cannot start: {what}: {e}"),
            Error::Panicked(threads) => write!(f, "threads panicked: {}", threads.join(", ")),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Listen(_, e) => Some(e),
            Error::Setup(_, e) => Some(&**e),
            Error::Panicked(_) => None,
        }
    }
}

/// The error for `what` that could not be set up.
fn setup<E: std::error::Error + Send + Sync + 'static>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Setup(what.to_owned(), Box::new(e))
}

/// Runs the service as configured by the environment until SIGTERM or SIGINT.
pub fn run() -> Result<(), Error> {
    let started = Instant::now();
    let config = Config::from_env().map_err(Error::Config)?;
    simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .with_utc_timestamps()
        .with_threads(true)
        .init()
        .map_err(setup("logger"))?;

    let budget = SystemLimits::read().budget(config.max_connections, config.redis_pool_size);
    // Before the first thread starts: every connection thread may sleep on a futex (the
    // dozen other threads add a fraction of a sleeper per bucket).
    let futex_hash = match futex::size_for(budget.connections) {
        Ok(buckets) => format!("{buckets} futex hash buckets"),
        Err(e) => format!("the kernel's futex hash ({e})"),
    };

    let hub = Hub::new(config.subscriber_queue);
    let metrics = Arc::new(Metrics::default());
    metrics
        .connection_budget
        .store(budget.connections, Ordering::Relaxed);
    let tls = match config.store.tls() {
        true => {
            Some(Arc::new(Tls::new(&config.redis_tls).map_err(|e| {
                Error::Setup("TLS to Redis".into(), e.into())
            })?))
        }
        false => None,
    };
    let redis_options = RedisOptions {
        key_prefix: config.key_prefix.clone(),
        pool_size: config.redis_pool_size,
        timeout: config.redis_timeout,
        wait_replicas: config.redis_wait_replicas,
        presence: config.presence.clone(),
        tls,
    };
    // Stopped in reverse order of starting: the feed before the cached reads it asks.
    let mut workers: Vec<Worker> = Vec::new();
    let (expiring, stopping) = (Arc::clone(&hub), Arc::clone(&hub));
    workers.push(
        Worker::spawn(
            "presence",
            move || expiring.run_expiries(),
            move || stopping.stop_expiries(),
        )
        .map_err(setup("presence thread"))?,
    );
    let (store, cached): (Arc<dyn Store>, CachedReads) = match &config.store {
        StoreConfig::Memory => {
            log::info!("store: in memory (one instance only; pings are lost on exit)");
            let store = Arc::new(MemoryStore::new(Arc::clone(&hub), config.presence.clone()));
            let (cached, worker) = CachedReads::start(store.clone(), Arc::clone(&hub))
                .map_err(setup("cached-reads thread"))?;
            workers.push(worker);
            (store, cached)
        }
        StoreConfig::Redis(url) => with_feed(
            RedisStore::start(url, &redis_options, Arc::clone(&metrics)),
            &config,
            &hub,
            &mut workers,
            "redis-psubscribe",
            RedisStore::probe,
            RedisStore::start_feed,
        )?,
        StoreConfig::Sentinel(sentinel) => with_feed(
            RedisStore::start_sentinel(sentinel, &redis_options, Arc::clone(&metrics)),
            &config,
            &hub,
            &mut workers,
            "redis-psubscribe",
            RedisStore::probe,
            RedisStore::start_feed,
        )?,
        StoreConfig::Cluster(seeds) => with_feed(
            ClusterStore::start(seeds, &redis_options, Arc::clone(&metrics)),
            &config,
            &hub,
            &mut workers,
            "redis-cluster",
            ClusterStore::probe,
            ClusterStore::start_feed,
        )?,
    };

    let contacts = match config.watch_policy {
        config::WatchPolicy::Contacts => {
            let (checks, threads) = ContactChecks::start(Arc::clone(&store), config.redis_timeout)
                .map_err(setup("contact-checks threads"))?;
            workers.extend(threads);
            Some(checks)
        }
        _ => None,
    };
    let (hangups, worker) = Hangups::start().map_err(setup("hangups thread"))?;
    workers.push(worker);
    let writing = Writing {
        keepalive: config.keepalive,
        max_stream: config.max_stream,
        timeout: config.write_timeout,
        send_buffer: config.stream_send_buffer,
    };
    let streams = Arc::new(Streams::new(
        hub,
        cached,
        hangups,
        writing,
        Arc::clone(&metrics),
    ));
    let listener = server::bind(&config.listen).map_err(|(addr, e)| Error::Listen(addr, e))?;
    let server = Server::new(
        listener,
        Shared {
            routes: Routes {
                store,
                streams: streams.clone(),
                metrics: Arc::clone(&metrics),
                limits: config.limits,
                cors: config.cors.clone(),
                trusted: config.trusted_proxies.clone(),
                policy: config.watch_policy,
                ping_rate: config.max_pings_per_minute.map(flood::PingRate::new),
                watcher_streams: flood::WatcherStreams::new(config.max_streams_per_watcher),
                contacts,
            },
            streams,
            metrics,
            timeouts: Timeouts {
                idle: config.idle_timeout,
                request: config.request_timeout,
            },
            write_timeout: config.write_timeout,
        },
    )
    .map_err(setup("listening address"))?;
    let addr = server.local_addr().map_err(setup("listening address"))?;
    if config.cors != config::Cors::Off {
        log::info!("CORS: allowing {:?}", config.cors);
    }
    if config.trusted_proxies.is_unset() {
        log::warn!(
            "TRUSTED_PROXIES is not set: any caller that reaches this port can claim to be any \
             user; set it to the reverse proxy's addresses"
        );
    } else {
        log::info!("X-User-Claim accepted from {}", config.trusted_proxies);
    }
    log_watching(&config);
    workers.push(signal_worker(server.stopper())?);
    log::info!(
        "heartbeat {} listening on {addr}; budget {budget}; {futex_hash}; ready in {:?}",
        env!("CARGO_PKG_VERSION"),
        started.elapsed()
    );

    server.run();
    workers.reverse();
    let panicked = worker::stop_all(workers);
    log::info!("stopped");
    match panicked.is_empty() {
        true => Ok(()),
        false => Err(Error::Panicked(panicked)),
    }
}

/// A Redis store as `start` made it, with its writers, then its `cached-reads` thread and
/// its feed (`start_feed`, on the `feed` thread), which asks that thread to resync; all
/// three join `workers`. Over TLS, `probe` first: a certificate refused stops the start.
fn with_feed<S: Store + 'static>(
    started: Result<(S, Worker), redis::RedisError>,
    config: &Config,
    hub: &Arc<Hub>,
    workers: &mut Vec<Worker>,
    feed: &str,
    probe: impl FnOnce(&S) -> Result<(), StoreError>,
    start_feed: impl FnOnce(&S, Arc<Hub>, CachedReads) -> std::io::Result<Vec<Worker>>,
) -> Result<(Arc<dyn Store>, CachedReads), Error> {
    let (store, writers) = started.map_err(setup(&format!("redis client for {}", config.store)))?;
    log::info!(
        "store: {} at {} with key prefix {:?}",
        store.kind().name(),
        config.store,
        config.key_prefix
    );
    workers.push(writers);
    if config.store.tls() {
        match probe(&store) {
            Ok(()) => log::info!("TLS with Redis: certificate accepted"),
            Err(e @ StoreError::Tls(_)) => {
                return Err(Error::Setup(config.store.to_string(), e.into()));
            }
            Err(e) => log::warn!("Redis not reached at start ({e}): pings get 503 until it is"),
        }
    }
    let store = Arc::new(store);
    let noted: Arc<dyn Store> = Arc::new(Denials::new(store.clone()));
    let (cached, worker) =
        CachedReads::start(noted.clone(), Arc::clone(hub)).map_err(setup("cached-reads thread"))?;
    workers.push(worker);
    let feed = start_feed(&store, Arc::clone(hub), cached.clone())
        .map_err(setup(&format!("{feed} thread")))?;
    workers.extend(feed);
    Ok((noted, cached))
}

/// The `signals` thread: turns SIGTERM and SIGINT into a stop of the server.
fn signal_worker(stopper: Stopper) -> Result<Worker, Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(setup("signal handler"))?;
    let handle = signals.handle();
    Worker::spawn(
        "signals",
        move || {
            if let Some(signal) = signals.forever().next() {
                log::info!("signal {signal} received: stopping");
                stopper.stop();
            }
        },
        move || handle.close(),
    )
    .map_err(setup("signal thread"))
}
