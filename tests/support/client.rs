//! Clients over raw sockets: one HTTP response read off the wire, an event stream read the
//! way a browser reads it, and a subscriber that never reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An HTTP response as read off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Headers HTTP allows once only: a field whose value is not a comma-separated list (RFC 9110
/// 5.3), of those heartbeat or a proxy in front of it may send.
const SINGLETONS: &[&str] = &[
    "access-control-allow-origin",
    "access-control-max-age",
    "content-length",
    "content-type",
    "date",
    "location",
    "retry-after",
    "x-accel-buffering",
];

impl Reply {
    /// The value of the header `name`, which must not stand twice (see [`Reply::headers_named`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers_named(name);
        assert!(values.len() <= 1, "{name} twice: {self:?}");
        values.first().copied()
    }

    /// Every value of the header `name`, in the order sent.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Asserts that no header stands twice, whatever HTTP allows.
    pub fn assert_each_header_once(&self) {
        for (i, (name, _)) in self.headers.iter().enumerate() {
            let again = self.headers[i + 1..]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
            assert!(!again, "{name} twice: {self:?}");
        }
    }

    /// Asserts a `200`.
    pub fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{self:?}");
    }

    /// Asserts the status and that the body is one non-empty line of text.
    pub fn assert_refused(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        let reason = self.body.strip_suffix('\n').unwrap_or_else(|| {
            panic!("an error body ends with a newline: {self:?}");
        });
        assert!(!reason.is_empty() && !reason.contains('\n'), "{self:?}");
        reason
    }
}

/// Reads a status line, headers and a `Content-Length` body.
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("a header line");
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    for name in SINGLETONS {
        let values = reply.headers_named(name);
        assert!(
            values.len() <= 1,
            "{name} sent twice: {values:?} in {reply:?}"
        );
    }
    if let Some(len) = reply.header("content-length") {
        let mut body = vec![0; len.parse().expect("a length")];
        reader.read_exact(&mut body)?;
        reply.body = String::from_utf8(body).expect("a UTF-8 body");
    }
    Ok(reply)
}

/// One thing read off an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event's data.
    Data(String),
    /// A `:` comment line (a keepalive).
    Comment,
    /// The server ended the stream with the last chunk.
    End,
}

/// An event stream read the way a browser reads it: chunked framing decoded, then SSE lines.
pub struct Sse {
    reader: BufReader<TcpStream>,
    pub head: Reply,
    /// Decoded SSE text not yet split into events.
    text: String,
    ended: bool,
    /// The `id:` of the last event read, as a browser keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
    /// The `event:` name of the last event read (`None`: a plain message).
    pub last_name: Option<String>,
}

impl Sse {
    /// Sends `GET path` and reads the response head.
    pub fn open(stream: TcpStream, path: &str, version: &str) -> Sse {
        Sse::open_with(stream, path, version, "")
    }

    /// Sends `GET path` with `headers` (each line ending in CRLF) and reads the head.
    pub fn open_with(stream: TcpStream, path: &str, version: &str, headers: &str) -> Sse {
        // One write: split writes would wait on Nagle and the server's delayed ACK.
        let request = format!(
            "GET {path} {version}\r\nHost: t\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        (&stream).write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let head = read_reply(&mut reader).expect("a response head");
        Sse {
            reader,
            head,
            text: String::new(),
            ended: false,
            last_id: None,
            last_name: None,
        }
    }

    /// The socket under the stream.
    pub fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// The next item within `timeout`, or `None`.
    pub fn next(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.take_item() {
                return Some(item);
            }
            if self.ended {
                return Some(SseItem::End);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.read_chunk() {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("the stream broke: {e}"),
            }
        }
    }

    /// The next event's data, skipping keepalives; panics if none comes within `timeout`.
    pub fn expect_data(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(SseItem::Data(data)) => return data,
                Some(SseItem::Comment) => continue,
                Some(SseItem::End) => panic!("the stream ended while waiting for an event"),
                None => panic!("no event within {timeout:?}"),
            }
        }
    }

    /// The next event of a many-user stream: its id and `(user, time, status)`, with exactly
    /// those three fields in its data.
    pub fn expect_user_ping(&mut self, timeout: Duration) -> (u64, (String, u64, String)) {
        let data = self.expect_data(timeout);
        assert_eq!(self.last_name, None, "a ping, not a named event: {data}");
        let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 3, "user, time and status: {data}");
        let user = object["user"].as_str().expect("a string user").to_owned();
        let time = object["time"].as_u64().expect("an integer time");
        let status = object["status"]
            .as_str()
            .expect("a string status")
            .to_owned();
        (self.id(), (user, time, status))
    }

    /// The id of the last event read, as a number.
    pub fn id(&self) -> u64 {
        self.last_id
            .as_deref()
            .expect("an event with an id")
            .parse()
            .expect("a numeric id")
    }

    /// The next event, which must say its user went offline: its id and `time`, with only
    /// `time` (and `user`, on a many-user stream) in its data.
    pub fn expect_offline(&mut self, timeout: Duration) -> (u64, u64) {
        let data = self.expect_data(timeout);
        assert_eq!(self.last_name.as_deref(), Some("offline"), "{data}");
        let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
        let object = value.as_object().expect("an object");
        let fields = if object.contains_key("user") { 2 } else { 1 };
        assert_eq!(object.len(), fields, "only time (and user): {data}");
        let time = object["time"].as_u64().expect("an integer time");
        (self.id(), time)
    }

    /// The next event's data parsed as `{"time": …, "status": …}`; not an offline event.
    pub fn expect_ping(&mut self, timeout: Duration) -> (u64, String) {
        let data = self.expect_data(timeout);
        assert_eq!(self.last_name, None, "a ping, not a named event: {data}");
        let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 2, "only time and status: {data}");
        let time = object["time"]
            .as_u64()
            .unwrap_or_else(|| panic!("integer time: {data}"));
        let status = object["status"].as_str().expect("string status").to_owned();
        (time, status)
    }

    /// Asserts that no event arrives for `quiet` (keepalives are fine).
    pub fn expect_no_data(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                None | Some(SseItem::Comment) => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Asserts that the server ends the stream with the last chunk within `timeout`.
    pub fn expect_end(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(SseItem::End) => return,
                Some(SseItem::Comment) => continue,
                Some(other) => panic!("expected the end, got {other:?}"),
                None => panic!("the stream did not end within {timeout:?}"),
            }
        }
    }

    fn take_item(&mut self) -> Option<SseItem> {
        let end = self.text.find("\n\n")?;
        let block: String = self.text.drain(..end + 2).collect();
        let mut data: Option<String> = None;
        let mut name = None;
        for line in block.lines() {
            if let Some(event) = line.strip_prefix("event:") {
                name = Some(event.strip_prefix(' ').unwrap_or(event).to_owned());
            }
            if let Some(id) = line.strip_prefix("id:") {
                self.last_id = Some(id.strip_prefix(' ').unwrap_or(id).to_owned());
            }
            if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                data = Some(match data {
                    Some(before) => format!("{before}\n{value}"),
                    None => value.to_owned(),
                });
            }
        }
        if data.is_some() {
            self.last_name = name;
        }
        Some(data.map_or(SseItem::Comment, SseItem::Data))
    }

    fn read_chunk(&mut self) -> std::io::Result<()> {
        if self.head.header("transfer-encoding") != Some("chunked") {
            let mut buf = [0; 4096];
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                self.ended = true;
            }
            self.text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            return Ok(());
        }
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line)? == 0 {
            panic!("the connection closed without the last chunk");
        }
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("a chunk size line: {size_line:?}"));
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk)?;
        assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
        if size == 0 {
            self.ended = true;
        }
        self.text
            .push_str(std::str::from_utf8(&chunk[..size]).expect("UTF-8 events"));
        Ok(())
    }
}

/// A client that sends `GET path` and never reads: a subscriber that stopped reading. Its
/// receive buffer is kept small, so the server's writes to it soon block.
pub fn stalled_subscriber(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    stream
}

/// The largest send queue (bytes not yet acknowledged) among the server's sockets on `port`
/// whose peers are the local `clients` ports, as `ss -tn` reports it.
pub fn largest_send_queue(port: u16, clients: &[u16]) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-tnH", "state", "all", &format!("( sport = :{port} )")])
        .output()
        .expect("run ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // State Recv-Q Send-Q Local:Port Peer:Port
            let fields: Vec<&str> = line.split_whitespace().collect();
            let peer_port: u16 = fields.get(4)?.rsplit(':').next()?.parse().ok()?;
            clients
                .contains(&peer_port)
                .then(|| fields.get(2)?.parse::<usize>().ok())
                .flatten()
        })
        .max()
        .unwrap_or(0)
}
