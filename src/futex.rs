//! The kernel's futex hash, sized for thousands of sleeping threads.
//!
//! Every idle stream thread sleeps on a futex of its own (`thread::park`), and every wake-up
//! (`unpark`) makes the kernel search one bucket of the process's futex hash for the sleeper.
//! Since Linux 6.17 that hash is private to each process and sized from the number of CPUs,
//! not of threads: 16 buckets on a 2-core machine. At 15,000 streams a bucket then holds
//! about 940 sleepers, and each wake-up walked them through cold memory. Measured here: 82%
//! of the `redis-psubscribe` thread's time went to the kernel's `futex_wake`, and delivery p99
//! in the first second of pings after 15,000 streams opened was 14 to 330 ms; with a bucket
//! per connection it was 1 ms. So the process asks for as many buckets as it may have
//! connection threads.

use std::io;

/// The most buckets asked for: 4 MiB of kernel memory at 64 bytes a bucket.
const MAX_BUCKETS: usize = 1 << 16;

/// Gives the process a futex hash of one bucket per thread it may hold (rounded up to a
/// power of two, 16 to 65,536). Returns the number of buckets, or the kernel's refusal:
/// kernels before 6.17, or built without a private futex hash, have none to size and answer
/// `EINVAL`; they use the global hash, sized from the CPUs, for every process.
pub fn size_for(threads: usize) -> io::Result<usize> {
    let buckets = buckets_for(threads);
    set_buckets(buckets)?;
    Ok(buckets)
}

fn buckets_for(threads: usize) -> usize {
    threads.min(MAX_BUCKETS).next_power_of_two().max(16)
}

/// `prctl(PR_FUTEX_HASH, ...)`; `libc` has no names for these yet (linux/prctl.h).
#[cfg(target_os = "linux")]
mod prctl {
    pub const PR_FUTEX_HASH: libc::c_int = 78;
    pub const SET_SLOTS: libc::c_ulong = 1;
    #[cfg(test)]
    pub const GET_SLOTS: libc::c_ulong = 2;
}

/// The one call that needs `unsafe`: `prctl` takes and returns integers only, and touches
/// no memory of ours.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn futex_hash_prctl(op: libc::c_ulong, buckets: usize) -> io::Result<usize> {
    // SAFETY: integer arguments only; the kernel reads and writes none of our memory.
    let result = unsafe {
        libc::prctl(
            prctl::PR_FUTEX_HASH,
            op,
            buckets as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

#[cfg(target_os = "linux")]
fn set_buckets(buckets: usize) -> io::Result<()> {
    futex_hash_prctl(prctl::SET_SLOTS, buckets).map(drop)
}

#[cfg(not(target_os = "linux"))]
fn set_buckets(_: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The buckets of the process's private futex hash; 0 when it uses the global one.
#[cfg(all(test, target_os = "linux"))]
fn buckets() -> io::Result<usize> {
    futex_hash_prctl(prctl::GET_SLOTS, 0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_hash_gets_a_bucket_per_thread_where_the_kernel_has_one_to_size() {
        match size_for(20_000) {
            Ok(set) => {
                assert_eq!(set, 32_768);
                assert_eq!(buckets().unwrap(), 32_768);
            }
            // No private futex hash here: the kernel must say so, not half-do it.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        }
    }

    #[test]
    fn buckets_are_a_power_of_two_from_16_to_65536() {
        assert_eq!(buckets_for(0), 16);
        assert_eq!(buckets_for(2), 16);
        assert_eq!(buckets_for(15_000), 16_384);
        assert_eq!(buckets_for(16_385), 32_768);
        assert_eq!(buckets_for(usize::MAX), 65_536);
    }
}
