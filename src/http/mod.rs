//! Our small HTTP/1.1 layer on `httparse`, in three parts: reading requests ([`request`]),
//! writing responses ([`response`]) and framing Server-Sent Events as chunks ([`sse`]); and
//! a scripted connection ([`scripted`]) to drive the reader without a socket.

mod request;
mod response;
mod scripted;
mod sse;

pub use self::request::{ReadError, Request, RequestReader, Timeouts, Transport};
pub use self::response::{JSON, Response, TEXT};
pub use self::scripted::Scripted;
pub use self::sse::{DeadlineWriter, EventStream};
