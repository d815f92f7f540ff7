//! The connection budget: how many connections (each one thread and one fd) the process can
//! hold before the kernel refuses a thread, a memory map or a file descriptor. Past it, the
//! accept loop answers `503` at once instead of failing halfway. The start line names the
//! limit that binds, and the setting of each limit that would bind below [`TARGET`].

use std::fmt;

/// Descriptors kept, besides the Redis pool's, for stdio (3), the listener, the Redis feed,
/// the two Redis writers, the signal pipe (2), the hang-up epoll set and its eventfd (13 in
/// all), and `.env` and `/proc` reads.
const RESERVED_FDS: u64 = 16;
/// Memory maps of the process itself: binary, libraries, heap arenas, the main thread.
const RESERVED_MAPS: u64 = 1024;
/// Each std thread maps about 4 regions: its stack, guard page, and their neighbours.
const MAPS_PER_THREAD: u64 = 4;
/// Threads besides the connection threads, plus room for other processes' ids.
const RESERVED_THREADS: u64 = 64;
/// The connections the start line says how to reach, when the limits allow fewer.
pub const TARGET: u64 = 100_000;

/// The kernel limits that bound the number of connection threads; `None` when unknown.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SystemLimits {
    /// `RLIMIT_NOFILE`, soft.
    pub open_files: Option<u64>,
    /// `vm.max_map_count`.
    pub max_map_count: Option<u64>,
    /// `kernel.threads-max`, `kernel.pid_max`, the cgroup's `pids.max` and `RLIMIT_NPROC`,
    /// those known, each with its name.
    pub threads: Vec<(u64, &'static str)>,
}

/// How many connections to serve at once, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub connections: usize,
    /// What sets the number: a kernel limit, or the `MAX_CONNECTIONS` override.
    pub bound_by: String,
    /// The setting of each limit that allows fewer than [`TARGET`] connections, that raises it.
    pub raise: Vec<String>,
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections (bound by {})",
            self.connections, self.bound_by
        )?;
        if !self.raise.is_empty() {
            write!(f, "; for {TARGET}: {}", self.raise.join(", "))?;
        }
        Ok(())
    }
}

impl SystemLimits {
    /// Reads this process's limits from `/proc` and the cgroup file system.
    pub fn read() -> SystemLimits {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let number = |path: &str| read(path).and_then(|s| s.trim().parse::<u64>().ok());
        let limits = read("/proc/self/limits").unwrap_or_default();
        let threads = [
            (number("/proc/sys/kernel/threads-max"), "kernel.threads-max"),
            (number("/proc/sys/kernel/pid_max"), "kernel.pid_max"),
            (number("/sys/fs/cgroup/pids.max"), "the cgroup's pids.max"),
            (soft_limit(&limits, "Max processes"), "RLIMIT_NPROC"),
        ]
        .into_iter()
        .filter_map(|(n, name)| Some((n?, name)))
        .collect();
        SystemLimits {
            open_files: soft_limit(&limits, "Max open files"),
            max_map_count: number("/proc/sys/vm/max_map_count"),
            threads,
        }
    }

    /// The most connections these limits allow when `redis_pool` descriptors go to the Redis
    /// pool, or `override_` if it is set.
    pub fn budget(&self, override_: Option<usize>, redis_pool: usize) -> Budget {
        if let Some(n) = override_ {
            return Budget {
                connections: n,
                bound_by: "MAX_CONNECTIONS".into(),
                raise: Vec::new(),
            };
        }
        let fds = RESERVED_FDS + redis_pool as u64;
        // Each limit: the connections it allows, its name and value, and what it must be for
        // TARGET connections.
        let mut candidates: Vec<(u64, String, &str, u64)> = Vec::new();
        if let Some(n) = self.open_files {
            let allows = n.saturating_sub(fds);
            candidates.push((
                allows,
                format!("RLIMIT_NOFILE={n}"),
                "RLIMIT_NOFILE",
                TARGET + fds,
            ));
        }
        if let Some(n) = self.max_map_count {
            let allows = n.saturating_sub(RESERVED_MAPS) / MAPS_PER_THREAD;
            let needs = TARGET * MAPS_PER_THREAD + RESERVED_MAPS;
            candidates.push((
                allows,
                format!("vm.max_map_count={n}"),
                "vm.max_map_count",
                needs,
            ));
        }
        for &(n, name) in &self.threads {
            let allows = n.saturating_sub(RESERVED_THREADS);
            candidates.push((
                allows,
                format!("{name}={n}"),
                name,
                TARGET + RESERVED_THREADS,
            ));
        }
        let raise = candidates
            .iter()
            .filter(|(allows, ..)| *allows < TARGET)
            .map(|(_, _, name, needs)| setting(name, *needs))
            .collect();
        let (connections, bound_by) = candidates
            .into_iter()
            .map(|(allows, named, ..)| (allows, named))
            .min_by_key(|(n, _)| *n)
            .unwrap_or((10_000, "no known limit; a default".into()));
        Budget {
            connections: usize::try_from(connections.max(1)).unwrap_or(usize::MAX),
            bound_by,
            raise,
        }
    }
}

/// The setting that makes the limit `name` at least `needs`.
fn setting(name: &str, needs: u64) -> String {
    match name {
        "RLIMIT_NOFILE" => format!(
            "ulimit -n {needs} (systemd LimitNOFILE=, docker run --ulimit nofile={needs}:{needs})"
        ),
        "RLIMIT_NPROC" => format!(
            "ulimit -u {needs} (systemd LimitNPROC=, docker run --ulimit nproc={needs}:{needs})"
        ),
        "the cgroup's pids.max" => format!(
            "a pids limit of {needs} (systemd TasksMax={needs}, docker run --pids-limit {needs}, \
             Kubernetes podPidsLimit)"
        ),
        sysctl => format!("sysctl -w {sysctl}={needs}"),
    }
}

/// The soft column of a `/proc/self/limits` row; `None` for "unlimited" or a missing row.
fn soft_limit(limits: &str, row: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    line[row.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max processes             96365                96365                processes
Max open files            20000                40000                files
Max locked memory         unlimited            unlimited            bytes
";

    #[test]
    fn soft_limits_are_read_from_proc_self_limits() {
        assert_eq!(soft_limit(LIMITS, "Max open files"), Some(20000));
        assert_eq!(soft_limit(LIMITS, "Max processes"), Some(96365));
        assert_eq!(soft_limit(LIMITS, "Max locked memory"), None);
        assert_eq!(soft_limit(LIMITS, "Max nothing"), None);
    }

    #[test]
    fn the_tightest_limit_sets_the_budget_and_is_named() {
        let limits = SystemLimits {
            open_files: Some(20_000),
            max_map_count: Some(65_530),
            threads: vec![(32_768, "kernel.pid_max"), (96_365, "RLIMIT_NPROC")],
        };
        let budget = limits.budget(None, 16);
        assert_eq!(budget.connections, (65_530 - 1024) / 4);
        assert_eq!(budget.bound_by, "vm.max_map_count=65530");
        assert_eq!(
            budget.to_string(),
            "16126 connections (bound by vm.max_map_count=65530); for 100000: \
             ulimit -n 100032 (systemd LimitNOFILE=, docker run --ulimit nofile=100032:100032), \
             sysctl -w vm.max_map_count=401024, sysctl -w kernel.pid_max=100064, \
             ulimit -u 100064 (systemd LimitNPROC=, docker run --ulimit nproc=100064:100064)"
        );
        let enough = SystemLimits {
            open_files: Some(1 << 20),
            max_map_count: Some(1 << 20),
            threads: vec![(4_194_304, "kernel.pid_max")],
        };
        assert!(enough.budget(None, 16).raise.is_empty());
        assert!(!enough.budget(None, 16).to_string().contains("for 100000"));
        let low_fds = SystemLimits {
            open_files: Some(64),
            ..limits.clone()
        };
        assert_eq!(low_fds.budget(None, 16).connections, 64 - 16 - 16);
        assert_eq!(low_fds.budget(None, 16).bound_by, "RLIMIT_NOFILE=64");
        assert_eq!(low_fds.budget(None, 4).connections, 64 - 16 - 4);
        assert_eq!(limits.budget(Some(7), 16).connections, 7);
        assert_eq!(limits.budget(Some(7), 16).bound_by, "MAX_CONNECTIONS");
        assert_eq!(
            limits.budget(Some(7), 16).to_string(),
            "7 connections (bound by MAX_CONNECTIONS)"
        );
    }

    #[test]
    fn a_budget_is_never_zero() {
        let tiny = SystemLimits {
            open_files: Some(10),
            ..SystemLimits::default()
        };
        assert_eq!(tiny.budget(None, 16).connections, 1);
    }

    #[test]
    fn this_machine_has_readable_limits() {
        let limits = SystemLimits::read();
        assert!(limits.open_files.is_some(), "{limits:?}");
        assert!(limits.budget(None, 16).connections >= 1);
    }
}
