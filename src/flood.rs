//! Limits on floods, per instance and in memory that a flood of new ids cannot grow: pings per
//! device a minute ([`PingRate`]), and streams per watcher ([`WatcherStreams`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;

/// Devices the ping table holds at once: past it, a new device takes the place of the least
/// recently active one of its set.
pub const TRACKED_DEVICES: usize = STRIPES * SLOTS_PER_STRIPE;
/// What the ping table can take of memory, at most: it is allocated zeroed, so a page of it
/// becomes resident only once a device lands there.
pub const PING_TABLE_BYTES: usize = TRACKED_DEVICES * size_of::<Slot>();

const STRIPES: usize = 16;
/// Each stripe's slots in one allocation of 128 KiB, which the allocator maps fresh (and so
/// zero, untouched) rather than clearing.
const SLOTS_PER_STRIPE: usize = 4096;
/// Slots a device may take, one of which its hash picks the set of.
const WAYS: usize = 4;
/// The width of a bucket of the count, in seconds.
const BUCKET_SECS: u64 = 10;
/// Buckets kept: a minute ending now overlaps the bucket of now and the six before it.
const BUCKETS: usize = 7;

/// One device's pings by bucket: `[key, newest bucket, counts]`, the seven counts as `u16`s
/// packed in the last two words. Key 0 is an empty slot.
type Slot = [u64; 4];

/// Pings a minute per device, counted in 10 s buckets over the last 70 s: a ping is admitted
/// while the buckets that a minute ending now overlaps hold fewer than the limit, so no minute
/// ever holds more (a device may have to wait up to 10 s longer than a minute).
pub struct PingRate {
    per_minute: u32,
    stripes: Box<[Mutex<Vec<Slot>>]>,
    /// Keyed afresh each start, so that no one can choose ids that share a set.
    hasher: std::hash::RandomState,
}

impl PingRate {
    /// `per_minute` is at most 65,535 (the counts are `u16`s).
    pub fn new(per_minute: u32) -> PingRate {
        assert!((1..=u32::from(u16::MAX)).contains(&per_minute));
        PingRate {
            per_minute,
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(vec![[0; 4]; SLOTS_PER_STRIPE]))
                .collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Counts a ping of `device` of `user` at `now_micros` if the device is under its limit;
    /// otherwise counts nothing and returns the seconds until a ping would be admitted.
    pub fn admit(&self, user: &str, device: &str, now_micros: u64) -> Result<(), u64> {
        let key = self.hasher.hash_one((user, device)) | 1;
        let now_secs = now_micros / 1_000_000;
        let bucket = now_secs / BUCKET_SECS;
        let set = (key >> 32) as usize % (STRIPES * SLOTS_PER_STRIPE / WAYS);
        let mut stripe = self.stripes[set % STRIPES].lock();
        let first = (set / STRIPES) * WAYS;
        let ways = &mut stripe[first..first + WAYS];
        let slot = match ways.iter().position(|s| s[0] == key) {
            Some(found) => &mut ways[found],
            None => {
                // An empty slot has key 0 and bucket 0, so it is the least recent.
                let oldest = (0..WAYS).min_by_key(|&i| ways[i][1]).unwrap_or(0);
                ways[oldest] = [key, bucket, 0, 0];
                &mut ways[oldest]
            }
        };
        let mut counts = unpack(slot);
        let shift = bucket.saturating_sub(slot[1]).min(BUCKETS as u64) as usize;
        counts.rotate_right(shift);
        counts[..shift].fill(0);
        let total: u32 = counts.iter().map(|&c| u32::from(c)).sum();
        if total < self.per_minute {
            counts[0] += 1;
            *slot = pack(key, bucket, &counts);
            return Ok(());
        }
        *slot = pack(key, bucket, &counts);
        // The first bucket boundary after which the buckets still in the window hold fewer.
        let mut left = total;
        for k in 1..=BUCKETS {
            left -= u32::from(counts[BUCKETS - k]);
            if left < self.per_minute {
                return Err((bucket + k as u64) * BUCKET_SECS - now_secs);
            }
        }
        unreachable!("no count is left once every bucket has aged out")
    }
}

fn unpack(slot: &Slot) -> [u16; BUCKETS] {
    std::array::from_fn(|i| (slot[2 + i / 4] >> (16 * (i % 4))) as u16)
}

fn pack(key: u64, bucket: u64, counts: &[u16; BUCKETS]) -> Slot {
    let mut words = [0u64; 2];
    for (i, &count) in counts.iter().enumerate() {
        words[i / 4] |= u64::from(count) << (16 * (i % 4));
    }
    [key, bucket, words[0], words[1]]
}

/// Streams held by each watcher on this instance. An entry lives only while its watcher holds
/// a stream, so the map is never larger than the streams open.
pub struct WatcherStreams {
    max: usize,
    held: Mutex<HashMap<Box<str>, usize>>,
}

impl WatcherStreams {
    pub fn new(max: usize) -> Arc<WatcherStreams> {
        Arc::new(WatcherStreams {
            max,
            held: Mutex::default(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// One more stream for `watcher`, held until the returned slot is dropped; `None` if the
    /// watcher holds the most already.
    pub fn enter(self: &Arc<Self>, watcher: &str) -> Option<StreamSlot> {
        let mut held = self.held.lock();
        let count = held.entry(watcher.into()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            streams: Arc::clone(self),
            watcher: watcher.into(),
        })
    }

    /// Streams `watcher` holds now.
    pub fn held(&self, watcher: &str) -> usize {
        self.held.lock().get(watcher).copied().unwrap_or(0)
    }
}

/// One stream of a watcher, counted until dropped.
pub struct StreamSlot {
    streams: Arc<WatcherStreams>,
    watcher: Box<str>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut held = self.streams.held.lock();
        if let Some(count) = held.get_mut(&self.watcher) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.watcher);
            }
        }
    }
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamSlot({:?})", self.watcher)
    }
}

impl PartialEq for StreamSlot {
    fn eq(&self, other: &Self) -> bool {
        self.watcher == other.watcher
    }
}

impl Eq for StreamSlot {}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn no_minute_holds_more_pings_than_the_limit() {
        let rate = PingRate::new(30);
        let start = 1_000_000 * SEC + 3 * SEC;
        let mut admitted = Vec::new();
        // 100 pings a second for five minutes.
        for i in 0..30_000u64 {
            let now = start + i * SEC / 100;
            if rate.admit("u", "d", now).is_ok() {
                admitted.push(now);
            }
        }
        for (i, &at) in admitted.iter().enumerate() {
            let in_minute = admitted[i..].iter().take_while(|&&t| t < at + 60 * SEC);
            assert!(
                in_minute.count() <= 30,
                "more than 30 in the minute from {at}"
            );
        }
        // At most 70 s a window: at least 30 every 70 s, so over 5 minutes at least 4 windows.
        assert!(admitted.len() >= 4 * 30, "{} admitted", admitted.len());
        assert_eq!(admitted[..30].len(), 30);
        assert!(admitted[29] < start + SEC, "the first 30 at once");
    }

    #[test]
    fn a_refusal_says_when_a_ping_will_be_admitted_and_it_is() {
        let rate = PingRate::new(3);
        let t0 = 500 * SEC + 5 * SEC; // bucket 50, 5 s in
        for i in 0..3 {
            rate.admit("u", "d", t0 + i).unwrap();
        }
        let wait = rate.admit("u", "d", t0 + 3).unwrap_err();
        // The three are in bucket 50, which leaves the window once bucket 57 begins, at 570 s.
        assert_eq!(wait, 570 - 505);
        assert_eq!(rate.admit("u", "d", (569 * SEC) + SEC - 1), Err(1));
        assert_eq!(rate.admit("u", "d", 570 * SEC), Ok(()));
        // Refusals were not counted: the window holds one ping now.
        rate.admit("u", "d", 570 * SEC + 1).unwrap();
        rate.admit("u", "d", 570 * SEC + 2).unwrap();
        assert!(rate.admit("u", "d", 570 * SEC + 3).is_err());
    }

    #[test]
    fn devices_and_users_are_counted_apart() {
        let rate = PingRate::new(1);
        let now = 100 * SEC;
        rate.admit("u", "phone", now).unwrap();
        assert!(rate.admit("u", "phone", now).is_err());
        rate.admit("u", "laptop", now).unwrap();
        rate.admit("v", "phone", now).unwrap();
    }

    #[test]
    fn a_flood_of_new_devices_takes_the_places_of_the_least_recent() {
        let rate = PingRate::new(2);
        let old = 100 * SEC;
        rate.admit("flooder", "d", old).unwrap();
        rate.admit("flooder", "d", old).unwrap();
        for i in 0..8 * TRACKED_DEVICES {
            rate.admit(&format!("fake-{i}"), "x", old + 15 * SEC)
                .unwrap();
        }
        // Forgotten: a fresh count, as for a device never seen.
        rate.admit("flooder", "d", old + 20 * SEC).unwrap();
        // A device active since is kept over the fakes of an older bucket.
        for i in 0..8 * TRACKED_DEVICES {
            rate.admit(&format!("fake-{i}"), "x", old + 15 * SEC)
                .unwrap_or_default();
        }
        rate.admit("flooder", "d", old + 20 * SEC).unwrap();
        assert!(rate.admit("flooder", "d", old + 20 * SEC).is_err());
    }

    #[test]
    fn a_watcher_holds_at_most_its_streams_and_leaves_no_entry_behind() {
        let streams = WatcherStreams::new(2);
        let a = streams.enter("w").unwrap();
        let b = streams.enter("w").unwrap();
        assert!(streams.enter("w").is_none());
        let other = streams.enter("x").unwrap();
        drop(a);
        let c = streams.enter("w").unwrap();
        assert_eq!(streams.held("w"), 2);
        drop((b, c, other));
        assert!(streams.held.lock().is_empty());
    }
}
