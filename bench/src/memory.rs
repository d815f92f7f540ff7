//! `heartbeat-bench presence-memory N`: what the offline timers cost per watched user, in
//! this process, with the hub itself: a counting allocator measures the heap the hub holds
//! for N watched users before and after each has a pending expiry.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use heartbeat::hub::Hub;
use heartbeat::ping::LastPing;
use heartbeat::presence::Update;

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

pub fn presence_memory(users: usize) -> Result<(), String> {
    let names: Vec<String> = (0..users).map(|i| format!("user-{i:08}")).collect();
    let hub = Hub::new(8);
    let before_watch = held();
    let subscriber = hub.subscribe(&names);
    let watched = held() - before_watch;
    let expires = heartbeat::ping::now_micros() + 3_600_000_000;
    let before_timers = held();
    let began = Instant::now();
    for (i, user) in names.iter().enumerate() {
        let ping = LastPing {
            seq: i as u64 + 1,
            time: 1,
            status: "0".into(),
        };
        // Expiries spread over a minute, as users' pings at a 60 s DEVICE_TTL_SECS are.
        let spread = 60_000_000 * i as u64 / users as u64;
        let update = Update::Online {
            ping,
            expires: expires + spread,
        };
        hub.publish_update(user, &update);
        while subscriber.wait(began).is_ok() {} // the event itself is not the timer's
    }
    let timers = held() - before_timers;
    let per_user = |bytes: isize| bytes as f64 / users as f64;
    let offline_timers = per_user(timers) + Hub::KNOWN_BYTES as f64;
    println!(
        "{users} watched users: the hub holds {:.1} bytes per user for them; their pending \
         expiries (spread over a minute) add {:.1} bytes per user (the calendar of buckets), \
         and what the hub knows of each presence is {} bytes in each user's own entry \
         (boxed: the map's spare slots do not carry it): {offline_timers:.1} bytes per \
         watched user for the offline timers",
        per_user(watched),
        per_user(timers),
        Hub::KNOWN_BYTES,
    );
    println!("result watched_bytes_per_user={:.1}", per_user(watched));
    println!("result timer_set_bytes_per_user={:.1}", per_user(timers));
    println!("result known_bytes_per_user={}", Hub::KNOWN_BYTES);
    println!("result offline_timer_bytes_per_user={offline_timers:.1}");
    drop(subscriber);
    Ok(())
}
