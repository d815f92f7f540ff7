//! Our small HTTP/1.1 layer on `httparse`, in three parts: reading requests ([`request`]),
//! writing responses ([`response`]) and framing Server-Sent Events as chunks ([`sse`]).

mod request;
mod response;
mod sse;

pub use self::request::{ReadError, Request, RequestReader, Timeouts, Transport};
pub use self::response::Response;
pub use self::sse::{DeadlineWriter, EventStream};
