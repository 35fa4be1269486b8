//! What the server processes and the host spent, read from `/proc`.

use std::collections::HashMap;

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The CPU seconds of every process in `pids`, summed.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// utime + stime of every process named `name` (its `/proc/<pid>/comm`), by pid: for
/// servers whose processes come and go, such as PostgreSQL's backends.
pub fn cpu_by_name(name: &str) -> HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|pid| (pid, cpu_seconds(pid)))
        .collect()
}

/// CPU seconds spent between two `cpu_by_name` readings, and by how many processes: one
/// that started in between counts from zero; one that ended is not counted.
pub fn cpu_spent(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> (f64, usize) {
    let spent: Vec<f64> = after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .filter(|d| *d > 0.0)
        .collect();
    (spent.iter().sum(), spent.len())
}

/// The host's CPU time so far: (busy, total) jiffies over every core.
pub fn host_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are the fourth and fifth fields.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the host's CPU that was busy between two `host_jiffies` readings.
pub fn busy_between(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    b.0.saturating_sub(a.0) as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_name() {
        let me = std::process::id();
        let name = std::fs::read_to_string("/proc/self/comm").unwrap();
        let found = cpu_by_name(name.trim());
        assert!(found.contains_key(&me), "{name:?} not found");
        assert!(!cpu_by_name("no-such-process-name").contains_key(&me));
    }

    #[test]
    fn spent_counts_new_processes_from_zero_and_skips_idle_ones() {
        let before = HashMap::from([(1, 2.0), (2, 5.0), (3, 1.0)]);
        // 1 spent 0.5 s, 2 nothing, 3 ended, 4 started and spent 0.25 s.
        let after = HashMap::from([(1, 2.5), (2, 5.0), (4, 0.25)]);
        assert_eq!(cpu_spent(&before, &after), (0.75, 2));
    }
}
