//! Server-Sent Events framing: the `200` head, then one chunk per event or keepalive, and
//! the zero-length chunk that ends a stream.

use std::fmt::Write as _;
use std::io::{self, Write};

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

    /// Sends one event with `id` and, as its single `data` line, the parts of `data` put
    /// together (the parts spare the caller a copy).
    pub fn event(&mut self, id: u64, data: &[&str]) -> io::Result<()> {
        debug_assert!(data.iter().all(|d| !d.contains(['\r', '\n'])));
        let id = id.to_string();
        match data {
            [one] => self.send(&["id: ", &id, "\ndata: ", one, "\n\n"]),
            [a, b] => self.send(&["id: ", &id, "\ndata: ", a, b, "\n\n"]),
            _ => self.send(&["id: ", &id, "\ndata: ", &data.concat(), "\n\n"]),
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
            .event(7, &[r#"{"time":1,"#, r#""status":"a"}"#])
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
            "25\r\nid: 7\ndata: {\"time\":1,\"status\":\"a\"}\n\n\r\n3\r\n:\n\n\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn http_1_0_streams_are_unframed_and_close() {
        let mut out = Vec::new();
        let mut stream = EventStream::start(&mut out, 0, &[]).unwrap();
        stream.event(1, &["{}"]).unwrap();
        stream.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Connection: close\r\n\r\nid: 1\ndata: {}\n\n"));
        assert!(!text.contains("chunked"));
    }
}
