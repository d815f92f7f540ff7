//! Server-Sent Events framing: the `200` head, then one chunk per event or keepalive, and
//! the zero-length chunk that ends a stream; and the socket writer that gives each of those
//! writes a deadline.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Writes to a stream socket, failing a write not done `timeout` after it began however many
/// partial writes it took. (A socket's own write timeout starts again at every partial write:
/// a client reading a few bytes now and then could hold its thread for ever.)
pub struct DeadlineWriter<'a> {
    socket: &'a TcpStream,
    timeout: Duration,
    /// Whether the socket's timeout was cut short for the rest of a write, and must be set
    /// back before the next.
    shortened: bool,
}

impl<'a> DeadlineWriter<'a> {
    /// A writer on `socket`, whose write timeout must already be `timeout`.
    pub fn new(socket: &'a TcpStream, timeout: Duration) -> DeadlineWriter<'a> {
        DeadlineWriter {
            socket,
            timeout,
            shortened: false,
        }
    }
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.socket).write(buf)
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let began = Instant::now();
        if self.shortened {
            self.socket.set_write_timeout(Some(self.timeout))?;
            self.shortened = false;
        }
        while !buf.is_empty() {
            match (&*self.socket).write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if !buf.is_empty() {
                // A partial write: the rest gets only what is left of the timeout.
                let left = self
                    .timeout
                    .checked_sub(began.elapsed())
                    .filter(|left| !left.is_zero())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
                    })?;
                self.socket.set_write_timeout(Some(left))?;
                self.shortened = true;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An open Server-Sent Events response. Each event or keepalive is one chunk, written in one
/// write (the socket is unbuffered, so it leaves at once). HTTP/1.0 clients get the events
/// unframed and the connection closes at the end.
pub struct EventStream<W: Write> {
    out: W,
    chunked: bool,
}

impl<W: Write> EventStream<W> {
    /// Writes the `200` head with the SSE headers and any `extra` ones.
    pub fn start(
        mut out: W,
        minor_version: u8,
        extra: &[(&'static str, String)],
    ) -> io::Result<EventStream<W>> {
        let chunked = minor_version >= 1;
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\n",
        );
        for (name, value) in extra {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str(if chunked {
            "Transfer-Encoding: chunked\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        out.write_all(head.as_bytes())?;
        Ok(EventStream { out, chunked })
    }

    /// Sends one event with `id`, the event `name` if it has one (`EventSource` hands a named
    /// event to that name's listeners, not to `onmessage`) and, as its single `data` line, the
    /// parts of `data` put together (the parts spare the caller a copy).
    pub fn event(&mut self, id: u64, name: Option<&str>, data: &[&str]) -> io::Result<()> {
        debug_assert!(data.iter().all(|d| !d.contains(['\r', '\n'])));
        let id = id.to_string();
        let (event, name) = match name {
            Some(name) => ("\nevent: ", name),
            None => ("", ""),
        };
        match data {
            [one] => self.send(&["id: ", &id, event, name, "\ndata: ", one, "\n\n"]),
            [a, b] => self.send(&["id: ", &id, event, name, "\ndata: ", a, b, "\n\n"]),
            _ => self.send(&["id: ", &id, event, name, "\ndata: ", &data.concat(), "\n\n"]),
        }
    }

    /// Sends a comment line that keeps proxies from closing an idle stream.
    pub fn keepalive(&mut self) -> io::Result<()> {
        self.send(&[":\n\n"])
    }

    /// Ends the stream with the last, empty chunk, so a browser reconnects.
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    }

    fn send(&mut self, parts: &[&str]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut chunk = String::with_capacity(len + 12);
        if self.chunked {
            let _ = write!(chunk, "{len:x}\r\n");
        }
        parts.iter().for_each(|p| chunk.push_str(p));
        if self.chunked {
            chunk.push_str("\r\n");
        }
        self.out.write_all(chunk.as_bytes())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_one_chunk_each() {
        let mut out = Vec::new();
        let mut stream = EventStream::start(&mut out, 1, &[]).unwrap();
        stream
            .event(7, None, &[r#"{"time":1,"#, r#""status":"a"}"#])
            .unwrap();
        stream
            .event(8, Some("offline"), &[r#"{"time":1}"#])
            .unwrap();
        stream.keepalive().unwrap();
        stream.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for header in [
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "X-Accel-Buffering: no",
            "Transfer-Encoding: chunked",
        ] {
            assert!(head.contains(header), "{header}");
        }
        assert_eq!(
            body,
            "25\r\nid: 7\ndata: {\"time\":1,\"status\":\"a\"}\n\n\r\n\
             27\r\nid: 8\nevent: offline\ndata: {\"time\":1}\n\n\r\n3\r\n:\n\n\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn http_1_0_streams_are_unframed_and_close() {
        let mut out = Vec::new();
        let mut stream = EventStream::start(&mut out, 0, &[]).unwrap();
        stream.event(1, None, &["{}"]).unwrap();
        stream.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Connection: close\r\n\r\nid: 1\ndata: {}\n\n"));
        assert!(!text.contains("chunked"));
    }

    #[test]
    fn a_write_gets_its_timeout_once_however_many_partial_writes_it_takes() {
        use std::io::Read;
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = listener.accept().unwrap().0;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        // A client that reads a little now and then: each read lets a partial write through.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickle = {
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let mut buf = [0; 1024];
                let mut read = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                read
            })
        };
        let timeout = Duration::from_millis(500);
        server.set_write_timeout(Some(timeout)).unwrap();
        let mut out = DeadlineWriter::new(&server, timeout);
        let started = Instant::now();
        let result = out.write_all(&vec![b'x'; 4 << 20]);
        let took = started.elapsed();
        assert!(
            result.is_err(),
            "4 MiB at about 50 KiB/s cannot be written in 0.5 s"
        );
        assert!(
            took < Duration::from_millis(900),
            "failed only after {took:?}"
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(trickle.join().unwrap() > 0, "partial writes went through");
    }
}
