//! What a ping is: the caller's claim, the status it sends, and the last ping as stored and streamed.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Limits;

/// The caller's identity as the auth service writes it into `X-User-Claim`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claim {
    pub userid: String,
    /// The pinging device; informational, for logs.
    #[serde(default)]
    pub clientid: Option<String>,
}

#[derive(Deserialize)]
struct PingBody {
    status: String,
}

/// A user's last ping. `seq` is above every id the user's watchers may have seen and never below
/// the clock in microseconds (the rule of [`Devices`](crate::presence::Devices) and the record
/// script), so it orders pings of one user even across instances whose clocks differ, and it
/// is the event's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPing {
    pub seq: u64,
    /// UTC epoch seconds when the ping was received.
    pub time: u64,
    pub status: String,
}

/// A user's presence as it goes out to subscribers, rendered once and shared by every
/// subscriber of the user: its sequence number (the event's `id`), its `data`, with the user
/// for streams of many users and without it for the single-user routes, and its SSE event name
/// (none for a ping, `offline` when the user went offline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    /// `{"user":"alice","time":1700000000,"status":"1"}`
    data: String,
    /// Where `"time"` begins in `data`: `{` and what follows is the single-user form.
    time_at: usize,
    /// Read from the store (a new stream's last pings, a resync), or derived from a stored
    /// expiry, not just published: its delivery lag is its age, not the service's latency.
    pub cached: bool,
    /// `Some("offline")` for the event that says the user went offline.
    pub name: Option<&'static str>,
}

impl Event {
    /// The event of `user`'s visible ping: `{"time","status"}`.
    pub fn new(user: &str, ping: &LastPing) -> Event {
        #[derive(Serialize)]
        struct Data<'a> {
            time: u64,
            status: &'a str,
        }
        let data = Data {
            time: ping.time,
            status: &ping.status,
        };
        Event::render(user, ping.seq, &data, None)
    }

    /// The event, with id `id`, that says `user` went offline; `time` is the last visible
    /// ping's: `event: offline` and `{"time"}`.
    pub fn offline(user: &str, id: u64, time: u64) -> Event {
        #[derive(Serialize)]
        struct Data {
            time: u64,
        }
        Event::render(user, id, &Data { time }, Some("offline"))
    }

    fn render(user: &str, seq: u64, data: &impl Serialize, name: Option<&'static str>) -> Event {
        let user = serde_json::to_string(user).expect("a string");
        let rest = serde_json::to_string(data).expect("a struct of numbers and strings");
        let data = format!("{{\"user\":{user},{}", &rest[1..]);
        Event {
            seq,
            time_at: "{\"user\":".len() + user.len() + 1,
            data,
            cached: false,
            name,
        }
    }

    /// `{"user":..,"time":..,"status":..}`, for `/subscribe?user=...`.
    pub fn with_user(&self) -> &str {
        &self.data
    }

    /// `{"time":..,"status":..}`, for `/subscribe/:userid`, in two parts (no copy).
    pub fn without_user(&self) -> [&str; 2] {
        ["{", &self.data[self.time_at..]]
    }
}

/// Why a ping was refused: a client error with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed claim or body: `400`.
    Invalid(String),
    /// An id or status over its limit: `413`.
    TooLarge(String),
}

impl Rejection {
    pub fn status_code(&self) -> u16 {
        match self {
            Rejection::Invalid(_) => 400,
            Rejection::TooLarge(_) => 413,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(reason) | Rejection::TooLarge(reason) => f.write_str(reason),
        }
    }
}

/// Parses the `X-User-Claim` header (`None` when it is missing).
pub fn parse_claim(header: Option<&[u8]>, limits: &Limits) -> Result<Claim, Rejection> {
    let raw = header.ok_or_else(|| Rejection::Invalid("missing X-User-Claim header".into()))?;
    let claim: Claim =
        from_object(raw).map_err(|e| Rejection::Invalid(format!("invalid X-User-Claim: {e}")))?;
    if claim.userid.is_empty() {
        return Err(Rejection::Invalid(
            "invalid X-User-Claim: userid is empty".into(),
        ));
    }
    check_id("userid", &claim.userid, limits)?;
    if let Some(client) = &claim.clientid {
        check_id("clientid", client, limits)?;
    }
    Ok(claim)
}

/// Parses a ping body, `{"status": "<code>"}`, into its status.
pub fn parse_status(body: &[u8], limits: &Limits) -> Result<String, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::Invalid(
            r#"empty body: expected {"status": "<code>"}"#.into(),
        ));
    }
    let body: PingBody = from_object(body).map_err(|e| {
        Rejection::Invalid(format!(
            r#"invalid body: {e}; expected {{"status": "<code>"}}"#
        ))
    })?;
    if body.status.len() > limits.max_status_bytes {
        return Err(Rejection::TooLarge(format!(
            "status is longer than {} bytes",
            limits.max_status_bytes
        )));
    }
    Ok(body.status)
}

/// Checks a user or client id (from a claim or a path) against the id limit.
pub fn check_id(what: &str, id: &str, limits: &Limits) -> Result<(), Rejection> {
    if id.len() > limits.max_id_bytes {
        return Err(Rejection::TooLarge(format!(
            "{what} is longer than {} bytes",
            limits.max_id_bytes
        )));
    }
    Ok(())
}

/// Now, in UTC epoch microseconds.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Parses a JSON object into `T`. (A derived `Deserialize` alone would also take an array
/// of the fields' values, such as `["1"]` for `{"status":"1"}`.)
fn from_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    serde_json::from_slice(json).map_err(|e| one_line(&e))
}

/// A serde_json error as one short line (it quotes client input, which may be long).
fn one_line(error: &serde_json::Error) -> String {
    let mut text = error.to_string().replace(['\r', '\n'], " ");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(raw: &str) -> Result<Claim, Rejection> {
        parse_claim(Some(raw.as_bytes()), &Limits::default())
    }

    fn status(raw: &str) -> Result<String, Rejection> {
        parse_status(raw.as_bytes(), &Limits::default())
    }

    #[test]
    fn a_claim_needs_a_non_empty_userid() {
        let ok = claim(r#"{"userid":"u1","clientid":"phone","exp":1}"#).unwrap();
        assert_eq!(ok.userid, "u1");
        assert_eq!(ok.clientid.as_deref(), Some("phone"));
        assert_eq!(claim(r#"{"userid":"u1"}"#).unwrap().clientid, None);

        for bad in [
            "",
            "u1",
            "[]",
            r#"["u1","c1"]"#,
            r#"{"clientid":"x"}"#,
            r#"{"userid":""}"#,
            r#"{"userid":5}"#,
            r#"{"userid":"u","clientid":7}"#,
        ] {
            let err = claim(bad).unwrap_err();
            assert_eq!(err.status_code(), 400, "{bad}");
            assert!(err.to_string().contains("X-User-Claim"), "{bad}: {err}");
        }
        let missing = parse_claim(None, &Limits::default()).unwrap_err();
        assert_eq!(missing.to_string(), "missing X-User-Claim header");
    }

    #[test]
    fn ids_are_limited_at_the_boundary() {
        let at = "u".repeat(256);
        assert!(claim(&format!(r#"{{"userid":"{at}"}}"#)).is_ok());
        let err = claim(&format!(r#"{{"userid":"{at}x"}}"#)).unwrap_err();
        assert_eq!(err.status_code(), 413);
        assert_eq!(err.to_string(), "userid is longer than 256 bytes");
        let err = claim(&format!(r#"{{"userid":"u","clientid":"{at}x"}}"#)).unwrap_err();
        assert_eq!(err.to_string(), "clientid is longer than 256 bytes");
    }

    #[test]
    fn a_body_is_an_object_with_a_string_status() {
        assert_eq!(status(r#"{"status":"a"}"#).unwrap(), "a");
        assert_eq!(status(r#" {"status":"","extra":[1]} "#).unwrap(), "");
        for bad in [
            "",
            "  ",
            "null",
            "\"1\"",
            r#"["1"]"#,
            r#"{"status":1}"#,
            r#"{"state":"1"}"#,
            "{",
        ] {
            let err = status(bad).unwrap_err();
            assert_eq!(err.status_code(), 400, "{bad:?}");
        }
        let err = status("\u{0}\n{").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn status_is_limited_at_the_boundary() {
        let at = "s".repeat(1024);
        assert_eq!(status(&format!(r#"{{"status":"{at}"}}"#)).unwrap(), at);
        let err = status(&format!(r#"{{"status":"{at}s"}}"#)).unwrap_err();
        assert_eq!(err.status_code(), 413);
    }

    #[test]
    fn an_event_renders_time_as_an_integer_with_and_without_its_user() {
        let ping = LastPing {
            seq: 3,
            time: 1_700_000_000,
            status: "say \"hi\"\n".into(),
        };
        let event = Event::new("a\"b,\"time\":", &ping);
        assert_eq!(event.seq, 3);
        assert_eq!(
            event.without_user().concat(),
            r#"{"time":1700000000,"status":"say \"hi\"\n"}"#
        );
        assert_eq!(
            event.with_user(),
            r#"{"user":"a\"b,\"time\":","time":1700000000,"status":"say \"hi\"\n"}"#
        );
        assert_eq!(event.name, None);
        let offline = Event::offline("u", 9, 1_700_000_000);
        assert_eq!(offline.name, Some("offline"));
        assert_eq!(offline.without_user().concat(), r#"{"time":1700000000}"#);
        assert_eq!(offline.with_user(), r#"{"user":"u","time":1700000000}"#);
    }
}
