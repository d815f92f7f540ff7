//! heartbeat: a small presence service. Clients ping it with a status; it keeps each user's
//! last ping in Redis (or in memory) and streams every new one, as Server-Sent Events, to
//! everyone watching that user, on every instance sharing the store.
//!
//! Synchronous and thread-per-connection: an accept loop ([`server`]) gives each connection
//! a thread that reads requests with our small HTTP layer ([`http`]), answers pings through
//! the [`store`] and, for a subscribe, streams events from the [`hub`] ([`stream`]).

// No unsafe code but one `prctl` call, isolated in `futex`.
#![deny(unsafe_code)]

pub mod budget;
pub mod cached;
pub mod config;
pub mod futex;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod ping;
pub mod routes;
pub mod server;
pub mod store;
pub mod stream;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use crate::budget::SystemLimits;
use crate::cached::CachedReads;
use crate::config::{Config, ConfigError, Listen, StoreConfig, host_port};
use crate::http::Timeouts;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::server::{Server, Shared};
use crate::store::{MemoryStore, RedisStore, Store, psubscribe};

/// Why the service could not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    /// The listening socket could not be bound.
    Listen(String, std::io::Error),
    /// A thread, the logger or the signal handler could not be set up.
    Setup(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Setup(what) => write!(f, "cannot start: {what}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the service as configured by the environment until SIGTERM or SIGINT.
pub fn run() -> Result<(), StartError> {
    let started = Instant::now();
    let config = Config::from_env().map_err(StartError::Config)?;
    simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .with_utc_timestamps()
        .with_threads(true)
        .init()
        .map_err(|e| StartError::Setup(format!("logger: {e}")))?;

    let budget = SystemLimits::read().budget(config.max_connections, config.redis_pool_size);
    // Before the first thread starts: every connection thread may sleep on a futex (the
    // dozen other threads add a fraction of a sleeper per bucket).
    let futex_hash = match futex::size_for(budget.connections) {
        Ok(buckets) => format!("{buckets} futex hash buckets"),
        Err(e) => format!("the kernel's futex hash ({e})"),
    };

    let hub = Hub::new(config.subscriber_queue);
    let metrics = Arc::new(Metrics::default());
    // Dropping this sender (when `run` returns) stops the Redis subscription thread.
    let (stop_feed, feed_stopped) = crossbeam_channel::bounded::<()>(0);
    let start_cached = |store: Arc<dyn Store>| {
        CachedReads::start(store, Arc::clone(&hub))
            .map_err(|e| StartError::Setup(format!("cached-reads thread: {e}")))
    };
    let (store, cached, feed): (Arc<dyn Store>, _, _) = match &config.store {
        StoreConfig::Memory => {
            log::info!("store: in memory (one instance only; pings are lost on exit)");
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::clone(&hub)));
            (Arc::clone(&store), start_cached(store)?, None)
        }
        StoreConfig::Redis(url) => {
            let store = RedisStore::new(
                url,
                &config.key_prefix,
                config.redis_pool_size,
                config.redis_timeout,
                Arc::clone(&metrics),
            )
            .map_err(|e| StartError::Setup(format!("redis client for {}: {e}", redact(url))))?;
            let store = Arc::new(store);
            let cached = start_cached(Arc::clone(&store) as Arc<dyn Store>)?;
            let handle = psubscribe::spawn(
                Arc::clone(&store),
                Arc::clone(&hub),
                cached.clone(),
                feed_stopped,
            )
            .map_err(|e| StartError::Setup(format!("redis-psubscribe thread: {e}")))?;
            log::info!(
                "store: redis at {} with key prefix {:?}",
                redact(url),
                config.key_prefix
            );
            (store as Arc<dyn Store>, cached, Some(handle))
        }
    };

    let listener = bind(&config.listen)?;
    let server = Server::new(
        listener,
        Shared {
            routes: Routes {
                store: Arc::clone(&store),
                hub: Arc::clone(&hub),
                metrics: Arc::clone(&metrics),
                limits: config.limits,
                cors: config.cors.clone(),
                connection_budget: budget.connections,
            },
            hub,
            metrics,
            cached,
            limits: config.limits,
            timeouts: Timeouts {
                idle: config.idle_timeout,
                request: config.request_timeout,
            },
            write_timeout: config.write_timeout,
            keepalive: config.keepalive,
            max_connections: budget.connections,
        },
    );
    let addr = server
        .local_addr()
        .map_err(|e| StartError::Setup(format!("listening address: {e}")))?;
    if config.cors != config::Cors::Off {
        log::info!("CORS: allowing {:?}", config.cors);
    }
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    spawn_signal_thread(stop, addr)?;
    log::info!(
        "heartbeat {} listening on {addr}; budget {budget}; {futex_hash}; ready in {:?}",
        env!("CARGO_PKG_VERSION"),
        started.elapsed()
    );

    server.run(stopped);
    drop(stop_feed);
    if let Some(feed) = feed
        && feed.join().is_err()
    {
        log::error!("the redis-psubscribe thread panicked");
    }
    log::info!("stopped");
    Ok(())
}

/// Asks the instance configured by the environment (`LISTEN`) for `/healthz`, for a
/// container `HEALTHCHECK` where there is no curl. `Ok` if it answered `200`.
pub fn healthcheck() -> Result<(), String> {
    use std::io::{Read, Write};
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let host = match config.listen.host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let target = host_port(host, config.listen.port);
    let timeout = std::time::Duration::from_secs(2);
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{target}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{target}: {e}"))?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split(' ').nth(1).unwrap_or("no answer");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match status {
        "200" => Ok(()),
        _ => Err(format!("{target}/healthz: {status} {body}")),
    }
}

/// Pending connections the kernel may queue (it caps this at `net.core.somaxconn`). std's
/// 128 drops SYNs when a thousand EventSources reconnect at once, and a dropped SYN is only
/// retried a second later.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `LISTEN`. An empty host means all interfaces: IPv6 and IPv4 where the host has
/// IPv6, IPv4 alone where it does not (as in some containers).
fn bind(listen: &Listen) -> Result<TcpListener, StartError> {
    let port = listen.port;
    let text = match listen.host.as_str() {
        "" => {
            return bind_addr((Ipv6Addr::UNSPECIFIED, port).into())
                .or_else(|_| bind_addr((Ipv4Addr::UNSPECIFIED, port).into()));
        }
        host => host_port(host, port),
    };
    let addrs = text
        .to_socket_addrs()
        .map_err(|e| StartError::Listen(text.clone(), e))?;
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match bind_addr(addr) {
            Ok(listener) => return Ok(listener),
            Err(StartError::Listen(_, e)) => last_error = e,
            Err(other) => return Err(other),
        }
    }
    Err(StartError::Listen(text, last_error))
}

fn bind_addr(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // A restarted instance can bind while its old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    listen().map_err(|e| StartError::Listen(addr.to_string(), e))
}

/// Turns SIGTERM and SIGINT into a stop message for the accept loop, then wakes it.
fn spawn_signal_thread(
    stop: crossbeam_channel::Sender<()>,
    addr: SocketAddr,
) -> Result<(), StartError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| StartError::Setup(format!("signal handler: {e}")))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::info!("signal {signal} received: stopping");
                let _ = stop.send(());
                let mut wake = addr;
                if wake.ip().is_unspecified() {
                    wake.set_ip(match wake {
                        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                    });
                }
                let _ = TcpStream::connect(wake);
            }
        })
        .map(drop)
        .map_err(|e| StartError::Setup(format!("signal thread: {e}")))
}

/// A Redis URL with its password hidden, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_logged_urls() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
