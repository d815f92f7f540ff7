//! The accept loop: one named thread with a small stack per connection ([`connection`]),
//! refused at once with `503` above the connection budget; the listening socket and the
//! stopper that ends the loop ([`listener`]).

mod connection;
mod listener;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::Mutex;

pub use self::connection::Shared;
pub use self::listener::{Stopper, bind};
use crate::http::Response;
use crate::metrics::Metrics;

/// Stack of each connection thread. Our deepest paths (`/healthz` through the redis crate's
/// parser, a Redis host name resolved by
/// getaddrinfo, a panic with its backtrace) fit in well under half of it; 32 KiB was measured to
/// survive a panic and 16 KiB not. Only the pages a thread touches count in RSS.
pub const STACK_SIZE: usize = 64 * 1024;

/// How long shutdown waits for streams to send their last chunk.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

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
    stopper: Stopper,
    stopped: Receiver<()>,
    /// Threads started, for their names.
    started: u64,
}

impl Server {
    pub fn new(listener: TcpListener, shared: Shared) -> io::Result<Server> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let wake = listener::connectable(listener.local_addr()?);
        Ok(Server {
            listener,
            shared: Arc::new(shared),
            stopper: Stopper { stop, wake },
            stopped,
            started: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What stops [`run`](Server::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Accepts connections until stopped. On return every stream has ended (or the grace
    /// period passed); idle keep-alive connections are left to close with the process.
    pub fn run(mut self) {
        let mut last_accept_warning: Option<Instant> = None;
        loop {
            let accepted = self.listener.accept();
            if !matches!(self.stopped.try_recv(), Err(TryRecvError::Empty)) {
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
        let left = self.shared.streams.close(SHUTDOWN_GRACE);
        if left > 0 {
            log::warn!("{left} streams did not end within {SHUTDOWN_GRACE:?}");
        }
    }

    /// Starts a thread for `stream`, or refuses it at once when over budget.
    fn dispatch(&mut self, stream: TcpStream) {
        let metrics = &self.shared.metrics;
        Metrics::count(&metrics.connections_total);
        let budget = metrics.connection_budget.load(Ordering::Relaxed);
        if metrics.connections.fetch_add(1, Ordering::AcqRel) >= budget {
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
                {
                    let _held = Held(&shared.metrics.connections);
                    if let Some(stream) = theirs.lock().take() {
                        connection::serve(stream, &shared);
                    }
                }
                shared.streams.linger();
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
