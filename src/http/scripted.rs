//! A connection that plays back scripted reads: the request reader's tests and its fuzz
//! target drive it through every way bytes can arrive, without a socket.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Duration;

use super::request::Transport;

/// Yields `reads` in order (`None` is a read timeout), then end of file; keeps what is
/// written.
#[derive(Debug, Default)]
pub struct Scripted {
    pub reads: VecDeque<Option<Vec<u8>>>,
    pub written: Vec<u8>,
}

impl Scripted {
    /// A script of these reads, with no timeout between them.
    pub fn new(reads: &[&[u8]]) -> Scripted {
        Scripted {
            reads: reads.iter().map(|r| Some(r.to_vec())).collect(),
            written: Vec::new(),
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reads.pop_front() {
            None => Ok(0),
            Some(None) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Some(mut data)) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                if n < data.len() {
                    self.reads.push_front(Some(data.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Scripted {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}
