//! The accept loop and the connections: one named thread with a small stack per connection,
//! which answers pings itself and, for a subscribe, becomes that subscriber's thread.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::Mutex;

use crate::cached::CachedReads;
use crate::config::Limits;
use crate::http::{EventStream, ReadError, RequestReader, Response, Timeouts};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes::{Outcome, Routes, Subscribe};
use crate::stream;

/// Stack of each connection thread. Our deepest paths (`/healthz` through the redis crate's
/// parser, a Redis host name resolved by getaddrinfo, a panic with its backtrace) fit in well
/// under half of it; 32 KiB was measured to survive a panic and 16 KiB not. Only the pages a
/// thread touches count in RSS.
pub const STACK_SIZE: usize = 64 * 1024;

/// How long a refused or rejected connection is drained before it is closed, so that the
/// client reads our answer instead of a reset.
const LINGER: Duration = Duration::from_millis(500);

/// How long shutdown waits for streams to send their last chunk.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// What the connections share.
pub struct Shared {
    pub routes: Routes,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// A write that blocks longer than this ends the connection.
    pub write_timeout: Duration,
    pub keepalive: Duration,
    pub max_connections: usize,
    pub metrics: Arc<Metrics>,
    pub cached: CachedReads,
}

/// Decrements a counter when dropped, whatever way a connection thread ends.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listening server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// Threads started, for their names.
    started: u64,
}

impl Server {
    pub fn new(listener: TcpListener, shared: Shared) -> Server {
        Server {
            listener,
            shared: Arc::new(shared),
            started: 0,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` receives a message or is dropped. Whoever stops the
    /// server must then connect to it once, to wake the accept call. On return every stream
    /// has ended (or the grace period passed); idle keep-alive connections are left to close
    /// with the process.
    pub fn run(mut self, stop: Receiver<()>) {
        let mut last_accept_warning: Option<Instant> = None;
        loop {
            let accepted = self.listener.accept();
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                break;
            }
            match accepted {
                Ok((stream, _)) => self.dispatch(stream),
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: back off so the process can recover
                    // (connections closing free them), and never stop accepting.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        log::warn!("accept failed, backing off: {e}");
                        last_accept_warning = Some(Instant::now());
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        drop(self.listener);
        self.shared.hub.close();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let streams = &self.shared.metrics.streams;
        while streams.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let left = streams.load(Ordering::Acquire);
        if left > 0 {
            log::warn!("{left} streams did not end within {SHUTDOWN_GRACE:?}");
        }
    }

    /// Starts a thread for `stream`, or refuses it at once when over budget.
    fn dispatch(&mut self, stream: TcpStream) {
        let metrics = &self.shared.metrics;
        Metrics::count(&metrics.connections_total);
        if metrics.connections.fetch_add(1, Ordering::AcqRel) >= self.shared.max_connections {
            metrics.connections.fetch_sub(1, Ordering::AcqRel);
            Metrics::count(&metrics.connections_refused_total);
            log::debug!("over the connection budget: refusing a connection");
            refuse(stream, "server busy: at its connection limit");
            return;
        }
        let n = self.started;
        self.started += 1;
        // The stream is handed over through a slot so that it can be refused if no thread
        // can be started.
        let handoff = Arc::new(Mutex::new(Some(stream)));
        let theirs = Arc::clone(&handoff);
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name(format!("http-{n}"))
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let _held = Held(&shared.metrics.connections);
                if let Some(stream) = theirs.lock().take() {
                    serve_connection(stream, &shared);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
            self.shared
                .metrics
                .connections
                .fetch_sub(1, Ordering::AcqRel);
            if let Some(stream) = handoff.lock().take() {
                refuse(stream, "server busy: cannot start a thread");
            }
        }
    }
}

/// Accept errors that concern one connection only, not the process.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers `503` without a thread (the accept loop must not block) and closes.
fn refuse(stream: TcpStream, reason: &str) {
    let _ = stream.set_nonblocking(true);
    // Take what the request already sent, so that closing does not reset the connection.
    let _ = (&stream).read(&mut [0; 1024]);
    let _ = Response::text(503, reason).write_to(&mut &stream, false);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads and answers requests until the client closes, a response says close, or the
/// connection becomes a stream.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(shared.write_timeout)) {
        log::warn!("cannot set a write timeout, dropping the connection: {e}");
        return;
    }
    let mut stream = stream;
    let mut reader = RequestReader::new();
    loop {
        let request = match reader.read(&mut stream, &shared.limits, &shared.timeouts) {
            Ok(request) => request,
            Err(ReadError::Closed | ReadError::Io(_)) => return,
            Err(ReadError::Reject(response)) => {
                log::debug!("request rejected: {}", response.body.trim_end());
                if response.write_to(&mut stream, false).is_ok() {
                    linger(stream);
                }
                return;
            }
        };
        let keep_alive = request.keep_alive();
        match shared.routes.handle(&request) {
            Outcome::Respond(response) => {
                if response.write_to(&mut stream, keep_alive).is_err() || !keep_alive {
                    return;
                }
            }
            Outcome::Subscribe(subscribe) => {
                let minor_version = request.minor_version;
                drop((request, reader));
                let _streaming = {
                    shared.metrics.streams.fetch_add(1, Ordering::AcqRel);
                    Held(&shared.metrics.streams)
                };
                serve_stream(&stream, minor_version, &subscribe, shared);
                return;
            }
        }
    }
}

fn serve_stream(stream: &TcpStream, minor_version: u8, subscribe: &Subscribe, shared: &Shared) {
    // Registered before the cached ping is read, so no ping falls in between.
    let subscription = shared.hub.subscribe(&subscribe.user);
    shared.cached.request(&subscribe.user);
    let client = subscribe.client.as_deref().unwrap_or("-");
    let result = EventStream::start(stream, minor_version, &subscribe.headers).and_then(|out| {
        log::debug!("stream of {:?} to {client} opened", subscribe.user);
        stream::serve(out, &subscription, shared.keepalive, &shared.metrics)
    });
    match result {
        Ok(()) => log::debug!("stream of {:?} to {client} ended", subscribe.user),
        Err(e) => log::debug!("stream of {:?} to {client} closed: {e}", subscribe.user),
    }
}

/// Half-closes after an error answer and drains what the client still sends, briefly, so
/// that it reads the answer rather than a reset from unread data.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0; 1024];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}
