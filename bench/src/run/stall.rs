//! A probe of the machine itself, so a delivery tail can be told from a stalled machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A thread that sleeps 1 ms at a time and notes how late it wakes. The server cannot delay
/// it (a thread waking from sleep gets a core within a few ms however many are runnable), so
/// a late wake-up at the same moment as a delivery tail means the machine itself stalled: the
/// hypervisor did not run the VM, or the kernel was busy with itself.
pub(super) struct StallProbe {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: thread::JoinHandle<Vec<(Duration, Duration)>>,
}

/// How late the probe's wake-ups were.
pub(super) struct Stalls(pub(super) Vec<(Duration, Duration)>);

/// A wake-up later than this is a stall.
pub(super) const STALL: Duration = Duration::from_millis(10);

impl StallProbe {
    pub(super) fn start(origin: Instant) -> StallProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut late = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let before = Instant::now();
                thread::sleep(Duration::from_millis(1));
                let overshoot = before.elapsed().saturating_sub(Duration::from_millis(1));
                if overshoot >= STALL {
                    late.push((before.duration_since(origin), overshoot));
                }
            }
            late
        });
        StallProbe { stop, thread }
    }

    pub(super) fn stop(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        Stalls(self.thread.join().unwrap_or_default())
    }
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((at, longest)) = self.0.iter().max_by_key(|(_, d)| *d) else {
            return write!(
                f,
                "machine stalls: none (no 1 ms sleep woke {STALL:?} late)"
            );
        };
        let total: Duration = self.0.iter().map(|(_, d)| *d).sum();
        write!(
            f,
            "machine stalls: {} sleeps of 1 ms woke over {STALL:?} late, {:.1} ms in all; the longest {:.1} ms at {:.2} s into the pings",
            self.0.len(),
            total.as_secs_f64() * 1000.0,
            longest.as_secs_f64() * 1000.0,
            at.as_secs_f64()
        )
    }
}
