//! A subscriber's side: waiting for its events on its own thread, and the mailbox through
//! which its cached pings and its client's hang-up reach it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::{Delivery, End, Hub, LEFT, Slot};
use crate::ping::Event;

/// One subscriber's registration, made on the thread that will wait for its events
/// ([`Subscriber::wait`]). Its events end when the hub lets go (too slow, or closed).
/// Dropping it unregisters it.
pub struct Subscriber {
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    events: Receiver<Delivery>,
}

/// Where the cached reads deliver a new subscriber's last pings: straight to it, not to
/// every subscriber of those users.
#[derive(Clone)]
pub struct Mailbox(Arc<Slot>);

impl Subscriber {
    pub(super) fn new(hub: Arc<Hub>, slot: Arc<Slot>, events: Receiver<Delivery>) -> Subscriber {
        Subscriber { hub, slot, events }
    }

    /// The next event, waiting for it until `deadline`; `Timeout` if none came by then,
    /// `Ended` once the subscription has ended and every queued event was taken. Call it on
    /// the thread that subscribed: that is the thread the hub wakes.
    pub fn wait(&self, deadline: Instant) -> Result<Delivery, WaitError> {
        loop {
            match self.events.try_recv() {
                Ok(delivery) => return Ok(delivery),
                Err(TryRecvError::Disconnected) => return Err(WaitError::Ended(End::Shutdown)),
                Err(TryRecvError::Empty) => {}
            }
            if let Some(end) = End::from_code(self.slot.ended.load(Ordering::Acquire)) {
                // Whatever was sent before the end is in the channel by now.
                return self.events.try_recv().map_err(|_| WaitError::Ended(end));
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(WaitError::Timeout);
            };
            // Returns at once if the hub unparked us since the last look; a wake-up meant
            // for something else only costs another look.
            thread::park_timeout(left);
        }
    }

    /// The users this subscriber watches, in the order asked.
    pub fn users(&self) -> &[Arc<str>] {
        &self.slot.users
    }

    /// How many users this subscriber watches.
    pub fn user_count(&self) -> usize {
        self.slot.users.len()
    }

    /// Where this subscriber's cached pings are to be delivered.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox(Arc::clone(&self.slot))
    }
}

impl Mailbox {
    /// The users of the subscriber, in its order.
    pub fn users(&self) -> &[Arc<str>] {
        &self.0.users
    }

    /// Whether the subscriber still takes events.
    pub fn is_open(&self) -> bool {
        self.0.is_open()
    }

    /// Ends the subscription because its client hung up: its thread wakes and ends.
    pub fn hang_up(&self) {
        self.0.release(End::ClientGone);
    }

    /// Queues the event of the user at `index` in [`users`](Mailbox::users). Not bound by the
    /// queue limit: a subscriber gets at most one cached ping per user.
    pub fn deliver(&self, index: u32, event: Arc<Event>) {
        // The send fails only once the subscriber has gone, when nobody needs the event.
        if self.is_open() && self.0.events.send((index, event)).is_ok() {
            self.0.waiter.unpark();
        }
    }
}

/// Why [`Subscriber::wait`] returned no event.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    Timeout,
    Ended(End),
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let was = self.slot.ended.swap(LEFT, Ordering::AcqRel);
        // Ended by the hub's close, which let go of every registration: nothing to take out,
        // and at shutdown every stream would otherwise queue for the hub's lock at once.
        if was != End::Shutdown.code() {
            self.hub.inner.lock().unregister(&self.slot);
        }
    }
}
