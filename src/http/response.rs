//! Writing responses: a status, headers and a body of one content type (one line of plain
//! text for errors). Each header is written at most once: the content type, length and
//! connection are the response's own, never in `headers`.

use std::fmt::Write as _;
use std::io::{self, Write};

/// Plain text, the type of every error body.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The type of `/status` and `/healthz` bodies.
pub const JSON: &str = "application/json";

/// A response with a (possibly empty) body of one content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers other than `Content-Type`, `Content-Length` and `Connection`, each once.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The body's `Content-Type`; none for an empty body.
    pub content_type: Option<&'static str>,
}

/// Headers that [`Response::write_to`] writes itself, from the response's own fields.
const OWN_HEADERS: [&str; 3] = ["content-type", "content-length", "connection"];

impl Response {
    /// A response with no body.
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: String::new(),
            content_type: None,
        }
    }

    /// A response whose body is the one line `reason`, as plain text.
    pub fn text(status: u16, reason: &str) -> Response {
        Response::typed(status, TEXT, reason)
    }

    /// A response whose body is `body` and a newline, of `content_type`.
    pub fn typed(status: u16, content_type: &'static str, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: format!("{body}\n"),
            content_type: Some(content_type),
        }
    }

    /// Adds a header. It must be neither one of the response's own nor one it has already.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        debug_assert!(
            !OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                && !self
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name)),
            "{name} would be written twice"
        );
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the whole response in one write; `keep_alive: false` adds `Connection: close`.
    pub fn write_to(&self, out: &mut impl Write, keep_alive: bool) -> io::Result<()> {
        let mut head = String::with_capacity(160);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if let Some(content_type) = self.content_type.filter(|_| !self.body.is_empty()) {
            let _ = write!(head, "Content-Type: {content_type}\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&self.body);
        out.write_all(head.as_bytes())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_length_type_and_connection() {
        let mut out = Vec::new();
        Response::text(405, "method not allowed")
            .with_header("Allow", "POST")
            .write_to(&mut out, false)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\
             Connection: close\r\n\r\nmethod not allowed\n"
        );
        let mut out = Vec::new();
        Response::empty(200).write_to(&mut out, true).unwrap();
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn a_typed_body_has_its_content_type_once() {
        let mut out = Vec::new();
        Response::typed(200, JSON, "{}")
            .with_header("Cache-Control", "no-store")
            .write_to(&mut out, true)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
             Content-Type: application/json\r\nContent-Length: 3\r\n\r\n{}\n"
        );
    }
}
