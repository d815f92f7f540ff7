//! The request reader on arbitrary bytes arriving in arbitrary pieces: heads, bodies,
//! pipelining, odd framing, a byte at a time. It must never panic, never read a body over the
//! limit, and answer whatever it rejects with a 4xx and a one-line reason.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use heartbeat::config::Limits;
use heartbeat::http::{ReadError, RequestReader, Scripted, Timeouts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the pieces' sizes (1 for byte-at-a-time) and whether a read
    // times out between them; the rest is what the client sends.
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(shape & 0x3f) + 1;
    let stall = shape & 0x40 != 0;
    let mut reads = VecDeque::new();
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        if stall && i == 1 {
            reads.push_back(None);
        }
        reads.push_back(Some(chunk.to_vec()));
    }
    let mut script = Scripted {
        reads,
        written: Vec::new(),
    };
    // Small limits, so the fuzzer reaches them.
    let limits = Limits {
        max_head_bytes: 512,
        max_body_bytes: 64,
        ..Limits::default()
    };
    let timeouts = Timeouts {
        idle: Duration::from_secs(1),
        request: Duration::from_secs(1),
    };
    let mut reader = RequestReader::new();
    loop {
        match reader.read(&mut script, &limits, &timeouts) {
            Ok(request) => {
                assert!(request.body.len() <= limits.max_body_bytes);
                let _ = (request.path(), request.keep_alive(), request.header("host"));
            }
            Err(ReadError::Reject(response)) => {
                assert!((400..500).contains(&response.status), "{}", response.status);
                let reason = response.body.strip_suffix('\n').expect("a line");
                assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
                break;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => break,
        }
    }
});
