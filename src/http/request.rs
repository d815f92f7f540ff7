//! Reading requests off a connection: heads parsed with `httparse`, capped and timed; bodies
//! by `Content-Length`; `Expect: 100-continue`; keep-alive and pipelining.
//!
//! A request head must fit in `max_head_bytes` and arrive, with its body, within the request
//! timeout once its first byte is in; between requests a keep-alive connection may idle for
//! the idle timeout. Bodies are read by `Content-Length` only, up to `max_body_bytes`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::response::Response;
use crate::config::Limits;

const MAX_HEADERS: usize = 64;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 2048;

/// A byte stream whose reads can time out: a `TcpStream`, or a script in tests.
pub trait Transport: Read + Write {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// How long a client may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Between requests on a keep-alive connection.
    pub idle: Duration,
    /// From a request's first byte to its last.
    pub request: Duration,
}

/// A request, head and body read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether the connection stays open after the response: HTTP/1.1 without
    /// `Connection: close`.
    pub fn keep_alive(&self) -> bool {
        self.minor_version == 1
            && !self.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection")
                    && v.split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            })
    }
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection, or left it idle, between requests.
    Closed,
    /// The connection failed mid-request; there is no one to answer.
    Io(io::Error),
    /// The request cannot be served; answer this, then close the connection.
    Reject(Response),
}

/// Reads requests off one connection, keeping bytes that arrived early (pipelining).
#[derive(Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// The read timeout last set on the socket: set again only when it changes, which saves
    /// a system call on almost every request.
    read_timeout: Option<Duration>,
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// Reads the next request. Answers `Expect: 100-continue` itself.
    pub fn read<S: Transport>(
        &mut self,
        stream: &mut S,
        limits: &Limits,
        timeouts: &Timeouts,
    ) -> Result<Request, ReadError> {
        let mut deadline = (!self.buf.is_empty()).then(|| Instant::now() + timeouts.request);
        let (mut request, head_len) = loop {
            if !self.buf.is_empty()
                && let Some(parsed) = parse_head(&self.buf, limits)?
            {
                break parsed;
            }
            let timeout = match deadline {
                None => timeouts.idle,
                Some(deadline) => remaining(deadline)?,
            };
            match self.fill(stream, timeout) {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Closed),
                Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && self.buf.is_empty() => return Err(ReadError::Closed),
                Err(e) if is_timeout(&e) => return Err(request_timeout()),
                Err(e) => return Err(ReadError::Io(e)),
            }
            deadline.get_or_insert_with(|| Instant::now() + timeouts.request);
        };
        let deadline = deadline.expect("set once a byte arrived");
        self.buf.drain(..head_len);

        let length = body_length(&request, limits)?;
        if let Some(expect) = request.header("expect") {
            if !expect.eq_ignore_ascii_case(b"100-continue") {
                return Err(reject(417, "unsupported Expect header"));
            }
            if request.minor_version == 1 && self.buf.len() < length {
                stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .map_err(ReadError::Io)?;
            }
        }
        while self.buf.len() < length {
            match self.fill(stream, remaining(deadline)?) {
                Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(request_timeout()),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        request.body = self.buf.drain(..length).collect();
        Ok(request)
    }

    fn fill<S: Transport>(&mut self, stream: &mut S, timeout: Duration) -> io::Result<usize> {
        if self.read_timeout != Some(timeout) {
            stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let result = loop {
            match stream.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.buf.truncate(len + *result.as_ref().unwrap_or(&0));
        result
    }
}

/// Parses a complete head from `buf`, or `None` if more bytes are needed.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ReadError> {
    // On the heap: 2 KiB on the stack would stay resident in every stream thread's stack.
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(head_too_large(limits)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "too many header fields"));
        }
        Err(e) => return Err(reject(400, &format!("malformed request: {e}"))),
    };
    if head_len > limits.max_head_bytes {
        return Err(head_too_large(limits));
    }
    let request = Request {
        method: head.method.unwrap_or_default().to_owned(),
        target: head.path.unwrap_or_default().to_owned(),
        minor_version: head.version.unwrap_or(1),
        headers: head
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_owned()))
            .collect(),
        body: Vec::new(),
    };
    Ok(Some((request, head_len)))
}

fn body_length(request: &Request, limits: &Limits) -> Result<usize, ReadError> {
    let mut length = None;
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(reject(
                411,
                "chunked request bodies are not supported: send Content-Length",
            ));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (parsed, length) {
                (None, _) => return Err(reject(400, "invalid Content-Length")),
                (Some(n), Some(before)) if n != before => {
                    return Err(reject(400, "conflicting Content-Length headers"));
                }
                (Some(n), _) => length = Some(n),
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body_bytes {
        return Err(reject(
            413,
            &format!(
                "request body is larger than {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    Ok(length)
}

fn remaining(deadline: Instant) -> Result<Duration, ReadError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(request_timeout()),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn reject(status: u16, reason: &str) -> ReadError {
    ReadError::Reject(Response::text(status, reason))
}

fn request_timeout() -> ReadError {
    reject(408, "request not received in time")
}

fn head_too_large(limits: &Limits) -> ReadError {
    reject(
        431,
        &format!(
            "request head is larger than {} bytes",
            limits.max_head_bytes
        ),
    )
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Scripted as Script;

    const TIMEOUTS: Timeouts = Timeouts {
        idle: Duration::from_secs(5),
        request: Duration::from_secs(5),
    };

    fn read_all(script: &mut Script, limits: &Limits) -> Vec<Result<Request, ReadError>> {
        let mut reader = RequestReader::new();
        let mut out = Vec::new();
        loop {
            let result = reader.read(script, limits, &TIMEOUTS);
            let stop = result.is_err();
            out.push(result);
            if stop {
                return out;
            }
        }
    }

    fn rejected(result: &Result<Request, ReadError>) -> (u16, &str) {
        match result {
            Err(ReadError::Reject(r)) => (r.status, r.body.trim_end()),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_request_split_across_reads_is_put_together() {
        let mut script = Script::new(&[
            b"POST /pi",
            b"ng HTTP/1.1\r\nHost: x\r\nContent-Le",
            b"ngth: 5\r\n\r\nhe",
            b"llo",
        ]);
        let results = read_all(&mut script, &Limits::default());
        let request = results[0].as_ref().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path(), "/ping");
        assert_eq!(request.header("content-length"), Some(&b"5"[..]));
        assert_eq!(request.body, b"hello");
        assert!(request.keep_alive());
        assert!(matches!(results[1], Err(ReadError::Closed)));
    }

    #[test]
    fn pipelined_requests_are_read_one_by_one() {
        let mut script = Script::new(&[
            b"POST /ping HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /subscribe/u?token=t HTTP/1.1\r\n\r\n",
        ]);
        let results = read_all(&mut script, &Limits::default());
        assert_eq!(results[0].as_ref().unwrap().body, b"ab");
        let second = results[1].as_ref().unwrap();
        assert_eq!(
            (second.method.as_str(), second.path()),
            ("GET", "/subscribe/u")
        );
        assert_eq!(second.target, "/subscribe/u?token=t");
        assert!(matches!(results[2], Err(ReadError::Closed)));
    }

    #[test]
    fn heads_are_limited_at_the_boundary() {
        let limits = Limits {
            max_head_bytes: 8192,
            ..Limits::default()
        };
        let head = |total: usize| {
            let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(total - fixed))
        };
        let mut at = Script::new(&[head(8192).as_bytes()]);
        assert!(read_all(&mut at, &limits)[0].is_ok());
        let mut over = Script::new(&[head(8193).as_bytes()]);
        let results = read_all(&mut over, &limits);
        assert_eq!(
            rejected(&results[0]),
            (431, "request head is larger than 8192 bytes")
        );
        // A head that never ends is cut off at the limit, not read forever.
        let endless = vec![b'a'; 64 * 1024];
        let mut endless = Script::new(&[b"GET / HTTP/1.1\r\nX: ", &endless]);
        assert_eq!(rejected(&read_all(&mut endless, &limits)[0]).0, 431);
    }

    #[test]
    fn bodies_are_limited_at_the_boundary() {
        let limits = Limits::default();
        let body_of = |n: usize| {
            let mut r = format!("POST /ping HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'x', n));
            r
        };
        let mut at = Script::new(&[&body_of(4096)]);
        assert_eq!(
            read_all(&mut at, &limits)[0].as_ref().unwrap().body.len(),
            4096
        );
        let mut over = Script::new(&[&body_of(4097)]);
        assert_eq!(
            rejected(&read_all(&mut over, &limits)[0]),
            (413, "request body is larger than 4096 bytes")
        );
    }

    #[test]
    fn expect_100_continue_is_answered_before_the_body_is_read() {
        let mut script = Script::new(&[
            b"POST /ping HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"abc",
        ]);
        let results = read_all(&mut script, &Limits::default());
        assert_eq!(results[0].as_ref().unwrap().body, b"abc");
        assert_eq!(script.written, b"HTTP/1.1 100 Continue\r\n\r\n");

        // Too large: refused at once, without inviting the body.
        let mut script = Script::new(&[
            b"POST /ping HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9999\r\n\r\n",
        ]);
        assert_eq!(
            rejected(&read_all(&mut script, &Limits::default())[0]).0,
            413
        );
        assert!(script.written.is_empty());
    }

    #[test]
    fn malformed_heads_and_lengths_are_rejected_with_a_reason() {
        let cases: &[(&[u8], u16)] = &[
            (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"POST /ping HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST /ping HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST /ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST /ping HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        ];
        for (raw, status) in cases {
            let mut script = Script::new(&[raw]);
            let results = read_all(&mut script, &Limits::default());
            let (got, reason) = rejected(&results[0]);
            assert_eq!(got, *status, "{}", String::from_utf8_lossy(raw));
            assert!(!reason.is_empty() && !reason.contains('\n'));
        }
        let many: String = (0..65).map(|i| format!("H{i}: v\r\n")).collect();
        let mut script = Script::new(&[format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()]);
        assert_eq!(
            rejected(&read_all(&mut script, &Limits::default())[0]).0,
            431
        );
    }

    #[test]
    fn timeouts_close_quietly_when_idle_and_answer_408_mid_request() {
        let mut idle = Script::default();
        idle.reads.push_back(None);
        assert!(matches!(
            read_all(&mut idle, &Limits::default())[0],
            Err(ReadError::Closed)
        ));

        let mut slow = Script::new(&[b"GET / HT"]);
        slow.reads.push_back(None);
        assert_eq!(rejected(&read_all(&mut slow, &Limits::default())[0]).0, 408);

        let mut cut = Script::new(&[b"GET / HT"]);
        assert!(matches!(
            read_all(&mut cut, &Limits::default())[0],
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let parse = |raw: &[u8]| {
            read_all(&mut Script::new(&[raw]), &Limits::default())
                .remove(0)
                .unwrap()
        };
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!parse(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive());
        assert!(!parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    }
}
