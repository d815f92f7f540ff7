//! The first phase of a run: every stream opened, in batches, and its head read.

use std::time::{Duration, Instant};

use mio::Token;

use super::wire::{Stream, StreamState, drive_stream};
use super::{Load, Opened};

impl Load<'_> {
    /// Opens the streams in batches of 500, so the listen backlog is not what is measured.
    pub(super) fn open_streams(&mut self) -> Result<Opened, String> {
        let o = self.o;
        let opening = Instant::now();
        let (mut established, mut refused) = (0, 0);
        while established + refused < o.streams {
            let target = (self.streams.len() + 500).min(o.streams);
            while self.streams.len() < target {
                let i = self.streams.len();
                let socket = self.connect(Token(i))?;
                // Stream i watches the K users from i * K on: each user is watched by about
                // streams * K / users streams.
                let users = (0..o.users_per_stream)
                    .map(|k| (i * o.users_per_stream + k) % o.users)
                    .collect();
                let mut stream = Stream::new(socket, users);
                stream.watcher = o.claims.then(|| format!("watcher-{i}"));
                self.streams.push(stream);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while established + refused < self.streams.len() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "only {established} of {} streams opened within 30 s",
                        self.streams.len()
                    ));
                }
                self.poll
                    .poll(&mut self.events, Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                for event in &self.events {
                    let stream = &mut self.streams[event.token().0];
                    match drive_stream(stream, self.nonce, &mut self.seen, None) {
                        StreamState::Opened => {
                            established += 1;
                            for &user in &stream.users {
                                self.subscribers[user] += 1;
                            }
                        }
                        StreamState::Failed => refused += 1,
                        StreamState::Same => {}
                    }
                }
            }
        }
        Ok(Opened {
            established,
            refused,
            took: opening.elapsed(),
        })
    }
}
