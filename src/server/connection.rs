//! One connection's thread: reads requests, answers them, and for a subscribe becomes that
//! subscriber's stream.

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{ReadError, RequestReader, Timeouts};
use crate::metrics::Metrics;
use crate::routes::{Outcome, Routes};
use crate::stream::Streams;

/// How long a rejected connection is drained before it is closed, so that the client reads
/// our answer instead of a reset.
const LINGER: Duration = Duration::from_millis(500);

/// What the connections share.
pub struct Shared {
    pub routes: Routes,
    pub streams: Arc<Streams>,
    pub metrics: Arc<Metrics>,
    pub timeouts: Timeouts,
    /// A write that blocks longer than this ends the connection.
    pub write_timeout: Duration,
}

/// Reads and answers requests until the client closes, a response says close, or the
/// connection becomes a stream.
pub fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(shared.write_timeout)) {
        log::warn!("cannot set a write timeout, dropping the connection: {e}");
        return;
    }
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let mut stream = stream;
    let mut reader = RequestReader::new();
    let limits = shared.routes.limits;
    loop {
        let request = match reader.read(&mut stream, &limits, &shared.timeouts) {
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
        let read_at = Instant::now();
        let keep_alive = request.keep_alive();
        let (response, ping) = match shared.routes.handle(&request, peer) {
            Outcome::Respond(response) => (response, None),
            Outcome::Pinged(response, outcome) => (response, Some(outcome)),
            Outcome::Subscribe(subscribe) => {
                let minor_version = request.minor_version;
                drop((request, reader));
                match shared.routes.check_contacts(subscribe) {
                    Ok(subscribe) => shared.streams.serve(&stream, minor_version, subscribe),
                    Err(refused) => drop(refused.write_to(&mut stream, false)),
                }
                return;
            }
        };
        let written = response.write_to(&mut stream, keep_alive);
        if let Some(outcome) = ping {
            shared
                .metrics
                .ping_duration(outcome)
                .observe(read_at.elapsed());
        }
        if written.is_err() || !keep_alive {
            return;
        }
    }
}

/// Half-closes after an error answer and drains what the client still sends, briefly, so
/// that it reads the answer rather than a reset from unread data.
///
/// Never inlined: its drain buffer would otherwise sit in every connection's frame, and a
/// stream's thread keeps every stack page it touched (measured: with it inlined, stream
/// threads held 12 KiB of stack instead of 8).
#[inline(never)]
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
