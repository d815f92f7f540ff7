//! Which users a request names: `/subscribe/:userid` path segments and `?user=` query values,
//! decoded and checked against the limits.

use std::collections::HashSet;

use crate::config::Limits;
use crate::ping::{Rejection, check_id};

/// A path segment with its `%XX` escapes decoded (`+` stays `+`); the result must be UTF-8.
pub fn path_segment(segment: &str) -> Result<String, Rejection> {
    decode(segment, false).map_err(|e| Rejection::Invalid(format!("{e} in path")))
}

/// The distinct `user` values of a query string, in the order given, decoded as an HTML form
/// encodes them (`+` is a space, `%XX` are UTF-8 bytes), so a browser's `URLSearchParams`
/// builds it; other parameters are ignored. From 1 to `max_users_per_stream` users, each
/// non-empty and within the id limit.
pub fn users_of_query(query: &str, limits: &Limits) -> Result<Vec<String>, Rejection> {
    let max = limits.max_users_per_stream;
    let mut users = Vec::new();
    let mut seen = HashSet::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |e| Rejection::Invalid(format!("{e} in the query"));
        if decode(name, true).map_err(bad)? != "user" {
            continue;
        }
        let user = decode(value, true).map_err(bad)?;
        if user.is_empty() {
            return Err(Rejection::Invalid(format!(
                "empty user id in the query: expected 1 to {max} non-empty ids"
            )));
        }
        check_id("user id", &user, limits)?;
        if seen.insert(user.clone()) {
            if users.len() == max {
                return Err(Rejection::Invalid(format!(
                    "more than {max} users: at most {max} per request"
                )));
            }
            users.push(user);
        }
    }
    if users.is_empty() {
        return Err(Rejection::Invalid(format!(
            "no user: expected ?user=<id>&user=<id>..., 1 to {max} users"
        )));
    }
    Ok(users)
}

/// Decodes `%XX` escapes, and `+` as a space if `plus_is_space`; the result must be UTF-8.
fn decode(text: &str, plus_is_space: bool) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("invalid percent-encoding")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "invalid percent-encoding")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "invalid percent-encoding")?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "text that is not UTF-8 once decoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(query: &str) -> Result<Vec<String>, Rejection> {
        users_of_query(query, &Limits::default())
    }

    #[test]
    fn query_values_are_decoded_as_a_form_and_repeats_count_once() {
        assert_eq!(
            users("user=a+b&token=jwt&user=c%2Fd&user=%C3%A9&user=a%20b&user=x%26y&users=no")
                .unwrap(),
            ["a b", "c/d", "é", "x&y"]
        );
        assert_eq!(users("user=1+1%3D2").unwrap(), ["1 1=2"]);
    }

    #[test]
    fn a_query_needs_one_to_the_limit_of_non_empty_users() {
        let reason = |q: &str| {
            let e = users(q).unwrap_err();
            (e.status_code(), e.to_string())
        };
        let none = reason("token=x");
        assert_eq!(none.0, 400);
        assert!(none.1.contains("256"), "{}", none.1);
        assert_eq!(reason("").0, 400);
        assert_eq!(reason("user=a&user=").0, 400);
        assert_eq!(reason("user").0, 400);
        assert_eq!(reason("user=%zz").0, 400);
        assert_eq!(reason("user=%ff").0, 400);

        let at: String = (0..256).map(|i| format!("user=u{i}&")).collect();
        assert_eq!(users(&at).unwrap().len(), 256);
        let twice = format!("{at}{at}");
        assert_eq!(users(&twice).unwrap().len(), 256, "repeats do not count");
        let over = reason(&format!("{at}user=one-more"));
        assert_eq!(
            over,
            (400, "more than 256 users: at most 256 per request".into())
        );

        let long = format!("user={}", "u".repeat(257));
        assert_eq!(
            reason(&long),
            (413, "user id is longer than 256 bytes".into())
        );
        assert!(users(&format!("user={}", "u".repeat(256))).is_ok());
    }

    #[test]
    fn path_segments_decode_escapes_but_not_plus() {
        assert_eq!(path_segment("a+b%20c%2F").unwrap(), "a+b c/");
        for bad in ["%zz", "%4", "%ff"] {
            assert_eq!(path_segment(bad).unwrap_err().status_code(), 400, "{bad}");
        }
    }
}
