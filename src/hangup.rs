//! The `hangups` thread: notices at once, without a write, that a stream's client closed or
//! reset its connection, and ends that stream.
//!
//! A stream thread only writes; it would see a closed connection at its next write, up to a
//! keepalive interval later, and even that write succeeds (only the one after fails), so a
//! gone client held a thread, a descriptor and a slot of the connection budget for up to two
//! intervals. Here one thread holds every stream socket in an epoll set for `EPOLLRDHUP` (the
//! client's FIN: a read-side end of file counts as gone, as in Go's net/http and nginx) and
//! `EPOLLHUP`/`EPOLLERR` (a reset), and releases the stream's subscriber, which wakes its
//! thread to end.
//!
//! epoll is called through the `libc` already in the tree rather than a crate: it is four
//! calls, and the crates that wrap it (mio, polling) bring an event-loop API this thread does
//! not need. The `unsafe` blocks are in this file alone, each with its reason.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::hub::Mailbox;
use crate::worker::Worker;

/// The token of the stop event; stream tokens count up from 0.
const STOP: u64 = u64::MAX;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// The epoll set of stream sockets, and whom to tell when one hangs up.
pub struct Hangups {
    epoll: OwnedFd,
    /// An eventfd in the set, written to stop the thread. It lives as long as the set: closing
    /// it would take it out of the set, and a stop written just before could be lost.
    stop: File,
    watched: Mutex<HashMap<u64, Mailbox>>,
    next: AtomicU64,
}

/// A socket in the set; dropping it takes the socket out, before the socket is closed.
pub struct Watch<'a> {
    hangups: &'a Hangups,
    token: u64,
    fd: RawFd,
}

impl Hangups {
    /// Starts the `hangups` thread.
    pub fn start() -> io::Result<(Arc<Hangups>, Worker)> {
        let epoll = epoll_create()?;
        let stop = event_fd()?;
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            stop.as_raw_fd(),
            STOP,
            libc::EPOLLIN,
        )?;
        let hangups = Arc::new(Hangups {
            epoll,
            stop: File::from(stop),
            watched: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        });
        let (theirs, stopper) = (Arc::clone(&hangups), Arc::clone(&hangups));
        let worker = Worker::spawn(
            "hangups",
            move || theirs.run(),
            move || drop((&stopper.stop).write_all(&1u64.to_ne_bytes())),
        )?;
        Ok((hangups, worker))
    }

    /// Watches `socket` until the returned guard is dropped; if its client hangs up first,
    /// `mailbox`'s subscriber is released as gone.
    pub fn watch(&self, socket: &TcpStream, mailbox: Mailbox) -> io::Result<Watch<'_>> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let fd = socket.as_raw_fd();
        self.watched.lock().insert(token, mailbox);
        // One-shot: after the hang-up is reported the socket stays in the set, silent, until
        // the guard takes it out.
        let events = libc::EPOLLRDHUP | libc::EPOLLONESHOT;
        if let Err(e) = epoll_ctl(&self.epoll, libc::EPOLL_CTL_ADD, fd, token, events) {
            self.watched.lock().remove(&token);
            return Err(e);
        }
        Ok(Watch {
            hangups: self,
            token,
            fd,
        })
    }

    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let ready = match epoll_wait(&self.epoll, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("hang-up watch failed, streams end at their next write: {e}");
                    return;
                }
            };
            for event in &events[..ready] {
                let token = event.u64;
                if token == STOP {
                    return;
                }
                if let Some(mailbox) = self.watched.lock().remove(&token) {
                    mailbox.hang_up();
                }
            }
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.hangups.watched.lock().remove(&self.token);
        // Fails only if the socket is no longer in the set, which cannot be: it is closed
        // after this guard is dropped.
        let _ = epoll_ctl(
            &self.hangups.epoll,
            libc::EPOLL_CTL_DEL,
            self.fd,
            self.token,
            0,
        );
    }
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
#[allow(unsafe_code)]
fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; a non-negative result is a new descriptor that only we own.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `eventfd`, to wake the thread for its stop.
#[allow(unsafe_code)]
fn event_fd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; a non-negative result is a new descriptor that only we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op, fd)` with `events` and `token` as the event's data.
#[allow(unsafe_code)]
fn epoll_ctl(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    token: u64,
    events: libc::c_int,
) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: `event` is a valid epoll_event that outlives the call; the kernel copies it.
    let result = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `epoll_wait` without a timeout; returns how many of `events` were filled.
#[allow(unsafe_code)]
fn epoll_wait(epoll: &OwnedFd, events: &mut [libc::epoll_event]) -> io::Result<usize> {
    let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: the kernel writes at most `capacity` events into `events`, which has room for
    // them and outlives the call.
    let ready = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), capacity, -1) };
    usize::try_from(ready).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{End, Hub, WaitError};
    use std::net::{Shutdown, TcpListener};
    use std::time::{Duration, Instant};

    /// A connected pair: (the server's end, the client's end).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_client_that_closes_or_half_closes_releases_its_subscriber_at_once() {
        let (hangups, worker) = Hangups::start().unwrap();
        let hub = Hub::new(4);
        for how in [Shutdown::Both, Shutdown::Write] {
            let (server, client) = pair();
            let sub = hub.subscribe(&["u".into()]);
            let _watch = hangups.watch(&server, sub.mailbox()).unwrap();
            let quiet = sub.wait(Instant::now() + Duration::from_millis(100));
            assert_eq!(quiet.unwrap_err(), WaitError::Timeout, "no hang-up yet");
            client.shutdown(how).unwrap();
            let started = Instant::now();
            let end = sub.wait(started + Duration::from_secs(2));
            assert_eq!(
                end.unwrap_err(),
                WaitError::Ended(End::ClientGone),
                "{how:?}"
            );
            assert!(started.elapsed() < Duration::from_millis(500));
        }
        assert_eq!(crate::worker::stop_all(vec![worker]), [] as [String; 0]);
    }

    #[test]
    fn a_socket_out_of_the_set_is_not_reported() {
        let (hangups, _worker) = Hangups::start().unwrap();
        let hub = Hub::new(4);
        let (server, client) = pair();
        let sub = hub.subscribe(&["u".into()]);
        drop(hangups.watch(&server, sub.mailbox()).unwrap());
        drop(client);
        let quiet = sub.wait(Instant::now() + Duration::from_millis(200));
        assert_eq!(quiet.unwrap_err(), WaitError::Timeout);
        assert!(hangups.watched.lock().is_empty());
    }
}
