//! Which route a request takes: the path (segments percent-decoded), the query (decoded as a
//! form) and `Last-Event-ID`, checked against the limits.

use super::{not_found, refuse};
use crate::config::Limits;
use crate::http::{Request, Response};
use crate::ids;
use crate::ping::{self, Rejection};
use crate::stream::{Form, Subscribe};

pub(super) enum Route {
    Ping,
    /// `POST /leave`: the claimed device is gone.
    Leave,
    Subscribe(Subscribe),
    /// `/status` with its users.
    Status(Vec<String>),
    Health,
    Metrics,
}

/// Matches a request: `/ping`, `/subscribe/:userid` and `/subscribe/:userid/client/:clientid`
/// (segments percent-decoded, the query ignored), `/subscribe?user=...` and
/// `/status?user=...` (the query decoded as a form), `/healthz` and `/metrics`.
pub(super) fn route(request: &Request, limits: &Limits) -> Result<Route, Response> {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let refused = |r: Rejection| refuse(&r);
    match path {
        "/ping" => return Ok(Route::Ping),
        "/leave" => return Ok(Route::Leave),
        "/healthz" => return Ok(Route::Health),
        "/metrics" => return Ok(Route::Metrics),
        "/status" => {
            return Ok(Route::Status(
                ids::users_of_query(query, limits).map_err(refused)?,
            ));
        }
        "/subscribe" => {
            return Ok(Route::Subscribe(Subscribe {
                users: ids::users_of_query(query, limits).map_err(refused)?,
                form: Form::Multi,
                client: None,
                after: last_event_id(request)?,
                headers: Vec::new(),
                slot: None,
                unchecked_for: None,
            }));
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/subscribe/") else {
        return Err(not_found());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (user, client) = match segments[..] {
        [user] => (user, None),
        [user, "client", client] if !client.is_empty() => (user, Some(client)),
        _ => return Err(not_found()),
    };
    if user.is_empty() {
        return Err(not_found());
    }
    let user = ids::path_segment(user).map_err(refused)?;
    ping::check_id("userid", &user, limits).map_err(refused)?;
    let client = match client {
        Some(client) => {
            let client = ids::path_segment(client).map_err(refused)?;
            ping::check_id("clientid", &client, limits).map_err(refused)?;
            Some(client)
        }
        None => None,
    };
    Ok(Route::Subscribe(Subscribe {
        users: vec![user],
        form: Form::Single,
        client,
        after: last_event_id(request)?,
        headers: Vec::new(),
        slot: None,
        unchecked_for: None,
    }))
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends: the id of the last event it got,
/// or 0 without one.
fn last_event_id(request: &Request) -> Result<u64, Response> {
    let Some(value) = request.header("last-event-id") else {
        return Ok(0);
    };
    let value = std::str::from_utf8(value).unwrap_or("?").trim();
    if value.is_empty() {
        return Ok(0);
    }
    value.parse().map_err(|_| {
        Response::text(
            400,
            "invalid Last-Event-ID: expected the id of an event, a whole number",
        )
    })
}
