//! What a run measured, for a person and for scripts/bench.sh: percentiles, per-second
//! tails and the data files the plots are drawn from.

use super::{Opened, Pings};
use crate::Options;

/// The human report, then `result key=value` lines for scripts/bench.sh.
pub(super) fn report(
    o: &Options,
    opened: &Opened,
    usage: Option<((u64, u64), (u64, u64))>,
    pings: &Pings,
    seen: &Seen,
) -> Result<(), String> {
    let established = opened.established;
    let rss_per_stream = usage
        .filter(|_| established > 0)
        .map(|((b, _), (a, _))| a.saturating_sub(b) as f64 / established as f64);
    println!(
        "streams: {established} open of {} ({} refused), {} users each, over {} users in {:.2?}",
        o.streams, opened.refused, o.users_per_stream, o.users, opened.took
    );
    if let Some(((rss0, th0), (rss1, th1))) = usage {
        println!(
            "server: RSS {rss0} KiB, {th0} threads before; {rss1} KiB, {th1} threads with the streams open; {:.2} KiB per stream",
            rss_per_stream.unwrap_or(0.0)
        );
    }
    let mut ping_latency = pings.latency.clone();
    let ping_errors = pings.errors;
    let sent = ping_latency.len() as u64 + ping_errors;
    println!(
        "pings: {sent} sent at {}/s over {} s, {} answered 2xx, {ping_errors} errors, {} sends found no free connection",
        o.rate,
        o.seconds,
        ping_latency.len(),
        pings.late
    );
    println!("ping latency:     {}", summary(&mut ping_latency));
    let mut delivery: Vec<u32> = seen.deliveries.iter().map(|&(_, us)| us).collect();
    println!("delivery latency: {}", summary(&mut delivery));
    let by_second: Vec<String> = p99_by_second(&seen.deliveries, o.rate)
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1000.0))
        .collect();
    println!(
        "delivery p99 by second of the run, ms: {}",
        by_second.join(" ")
    );
    let stalls = &pings.stalls;
    println!("{stalls}");
    if let Some(dir) = &o.plot_data {
        write_plot_data(dir, &seen.deliveries, o.rate)?;
    }
    if let Some(path) = &o.dump {
        let lines: String = seen
            .deliveries
            .iter()
            .map(|(id, us)| format!("{id} {us}\n"))
            .collect();
        std::fs::write(path, lines).map_err(|e| format!("{path}: {e}"))?;
    }
    let expected = pings.expected;
    println!(
        "deliveries: {} received of {expected} expected; {} repeated; {} unexpected",
        delivery.len(),
        seen.repeated,
        seen.unexpected
    );
    let mut offline = seen.offline.clone();
    if o.leave || o.expire_secs > 0 {
        let from = if o.leave {
            "the leave"
        } else {
            "the ping plus the TTL"
        };
        println!(
            "leaves: {} sent, {} errors; offline events: {} received of {} expected; {} \
             repeated; {} unexpected; latency from {from}: {}",
            pings.leaves,
            pings.leave_errors,
            offline.len(),
            pings.offline_expected,
            seen.offline_repeated,
            seen.offline_unexpected,
            summary(&mut offline)
        );
        println!("result offline_expected={}", pings.offline_expected);
        println!("result offline_received={}", offline.len());
        println!("result offline_repeated={}", seen.offline_repeated);
        println!("result offline_p99_us={}", percentile(&mut offline, 0.99));
    }
    if let Some(probe) = pings.probe {
        println!(
            "probe: a new stream of {} users had all their cached pings {:.2?} after its request",
            o.probe_users, probe
        );
    }
    let p = |v: &mut Vec<u32>, q: f64| percentile(v, q);
    println!("result streams_open={established}");
    println!("result open_ms={}", opened.took.as_millis());
    println!("result watches={}", established * o.users_per_stream);
    println!("result deliveries_repeated={}", seen.repeated);
    if o.probe_users > 0 {
        let probe = pings.probe.map_or(-1.0, |p| p.as_secs_f64() * 1000.0);
        println!("result probe_ms={probe:.2}");
    }
    if let Some(((rss0, th0), (rss1, th1))) = usage {
        println!("result rss_before_kib={rss0}");
        println!("result rss_after_kib={rss1}");
        println!("result threads_before={th0}");
        println!("result threads_after={th1}");
        println!(
            "result rss_per_stream_kib={:.2}",
            rss_per_stream.unwrap_or(0.0)
        );
    }
    println!("result pings_ok={}", ping_latency.len());
    println!("result ping_errors={ping_errors}");
    println!("result ping_p99_us={}", p(&mut ping_latency, 0.99));
    println!("result delivery_p50_us={}", p(&mut delivery, 0.50));
    println!("result delivery_p99_us={}", p(&mut delivery, 0.99));
    println!(
        "result delivery_max_us={}",
        delivery.iter().max().unwrap_or(&0)
    );
    println!("result stalls={}", stalls.0.len());
    println!(
        "result stall_longest_us={}",
        stalls
            .0
            .iter()
            .map(|(_, d)| d.as_micros())
            .max()
            .unwrap_or(0)
    );
    println!("result deliveries_expected={expected}");
    println!("result deliveries_received={}", delivery.len());
    if established < o.streams
        || ping_errors > 0
        || (delivery.len() as u64) < expected
        || seen.repeated > 0
        || (o.probe_users > 0 && pings.probe.is_none())
        || (offline.len() as u64) < pings.offline_expected
        || seen.offline_repeated > 0
        || seen.offline_unexpected > 0
        || pings.leave_errors > 0
    {
        return Err(
            "streams refused, pings failed, deliveries lost or repeated, or the probe \
             incomplete (see above)"
                .into(),
        );
    }
    Ok(())
}

/// Deliveries seen on the streams.
#[derive(Default)]
pub(super) struct Seen {
    /// Every delivery as (ping number, latency in microseconds).
    pub(super) deliveries: Vec<(u32, u32)>,
    /// Events of this run for a ping never sent.
    pub(super) unexpected: u64,
    /// Events of this run that a stream had already received.
    pub(super) repeated: u64,
    /// The latency of every offline event of this run (from its user's leave), in
    /// microseconds; offline events a stream had already received; and those of no leave.
    pub(super) offline: Vec<u32>,
    pub(super) offline_repeated: u64,
    pub(super) offline_unexpected: u64,
}

/// The delivery p99 of the pings sent in each second of the run, in microseconds, to show
/// when a tail happens (for instance only just after the streams opened).
pub(super) fn p99_by_second(deliveries: &[(u32, u32)], rate: u32) -> Vec<u32> {
    by_second(deliveries, rate)
        .iter_mut()
        .map(|v| percentile(v, 0.99))
        .collect()
}

/// The delivery latencies of the pings sent in each second of the run.
pub(super) fn by_second(deliveries: &[(u32, u32)], rate: u32) -> Vec<Vec<u32>> {
    let mut seconds: Vec<Vec<u32>> = Vec::new();
    for &(ping, us) in deliveries {
        let second = (ping / rate.max(1)) as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Vec::new);
        }
        seconds[second].push(us);
    }
    seconds
}

/// Writes the data scripts/plot.gp draws into `dir`: `by_second.dat` (second, p50, p99 and
/// max in ms) and `distribution.dat` (latency in ms, fraction of deliveries slower), one line
/// per 1/1000 of the deliveries and every one of the slowest thousand.
pub(super) fn write_plot_data(
    dir: &str,
    deliveries: &[(u32, u32)],
    rate: u32,
) -> Result<(), String> {
    use std::fmt::Write as _;
    let ms = |us: u32| f64::from(us) / 1000.0;
    let mut text = String::from("# second p50_ms p99_ms max_ms\n");
    for (second, mut v) in by_second(deliveries, rate).into_iter().enumerate() {
        let max = v.iter().copied().max().unwrap_or(0);
        let (p50, p99) = (percentile(&mut v, 0.5), percentile(&mut v, 0.99));
        let _ = writeln!(text, "{second} {} {} {}", ms(p50), ms(p99), ms(max));
    }
    let write = |name: &str, text: &str| {
        let path = format!("{dir}/{name}");
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))
    };
    write("by_second.dat", &text)?;
    let mut all: Vec<u32> = deliveries.iter().map(|&(_, us)| us).collect();
    all.sort_unstable();
    let n = all.len();
    let mut text = String::from("# latency_ms fraction_slower\n");
    let step = (n / 1000).max(1);
    for (i, us) in all.iter().enumerate() {
        if i % step == 0 || i + 1000 >= n {
            let slower = (n - i - 1) as f64 / n as f64;
            let _ = writeln!(text, "{} {}", ms(*us), slower.max(0.5 / n as f64));
        }
    }
    write("distribution.dat", &text)
}

pub(super) fn percentile(values: &mut [u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

pub(super) fn summary(values: &mut [u32]) -> String {
    if values.is_empty() {
        return "no samples".into();
    }
    let ms = |us: u32| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(percentile(values, 0.50)),
        ms(percentile(values, 0.90)),
        ms(percentile(values, 0.99)),
        ms(*values.iter().max().unwrap()),
        values.len()
    )
}
