//! Writing responses: a status, headers and a plain-text body (one line for errors).

use std::fmt::Write as _;
use std::io::{self, Write};

/// A response with a (possibly empty) plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    /// A response with no body.
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A response whose body is the one line `reason`.
    pub fn text(status: u16, reason: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: format!("{reason}\n"),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
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
        if !self.body.is_empty() {
            head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
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
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
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
}
