//! Tracing set-up: human-readable or JSON logs, filter from config; the metrics recorder.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(json: bool, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    // try_init: tests may call this more than once in a process.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // The recorder from the start: what is counted before the first scrape counts too.
    prometheus();
}

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use; gateway and worker
/// share it in standalone mode).
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let drift = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];
            // Sizes (commands per batch, batches per commit): buckets too, not summaries,
            // whose sketches cost memory per histogram and cannot be aggregated.
            let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("jam_sync_drift_seconds".into()), &drift)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("jam_commit_batches".into()), &sizes)
                })
                .expect("valid buckets");
            let handle = builder
                .install_recorder()
                .expect("one recorder per process");
            let upkeep = handle.clone();
            // Histograms drain their buffers on render; upkeep bounds them between scrapes.
            std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            handle
        })
        .clone()
}

/// A hot-path metric: its name and, for a labelled one, the label and its value, all
/// `'static` (so the series stay bounded).
type Site = (usize, usize, usize);

fn site(name: &'static str, label: Option<(&'static str, &'static str)>) -> Site {
    let (k, v) = label.unwrap_or(("", ""));
    (
        name.as_ptr() as usize,
        k.as_ptr() as usize,
        v.as_ptr() as usize,
    )
}

/// Hashes a [`Site`]'s three addresses with one multiply each (FxHash's step): SipHash's
/// rounds cost more than the lookup they replace.
#[derive(Default)]
struct SiteHasher(u64);

impl std::hash::Hasher for SiteHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Handles<H> = HashMap<Site, H, std::hash::BuildHasherDefault<SiteHasher>>;

thread_local! {
    static COUNTERS: RefCell<Handles<metrics::Counter>> = RefCell::default();
    static HISTOGRAMS: RefCell<Handles<metrics::Histogram>> = RefCell::default();
}

fn counter(name: &'static str, label: Option<(&'static str, &'static str)>) -> metrics::Counter {
    match label {
        Some((k, v)) => metrics::counter!(name, k => v),
        None => metrics::counter!(name),
    }
}

fn histogram(
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
) -> metrics::Histogram {
    match label {
        Some((k, v)) => metrics::histogram!(name, k => v),
        None => metrics::histogram!(name),
    }
}

/// Use the handle kept in `kept` for `at`, made by `make` the first time. Before the
/// recorder is installed ([`init`]) nothing is kept: a handle made then would stay a no-op.
fn with_kept<H>(
    kept: &'static std::thread::LocalKey<RefCell<Handles<H>>>,
    at: Site,
    make: impl FnOnce() -> H,
    use_it: impl FnOnce(&H),
) {
    if PROMETHEUS.get().is_none() {
        return use_it(&make());
    }
    kept.with_borrow_mut(|m| match m.get(&at) {
        Some(h) => use_it(h),
        None => use_it(m.entry(at).or_insert(make())),
    });
}

/// Add `n` to a counter on the hot path. The `metrics` macros look their key up in the
/// recorder on every call (a hash, a lock, an `Arc` cloned and dropped): 3.3 % of the
/// standalone's CPU in the rooms scenario (docs/benchmarks.md, 2026-12-05). This keeps each
/// handle per thread.
pub fn count(name: &'static str, label: Option<(&'static str, &'static str)>, n: u64) {
    let make = || counter(name, label);
    with_kept(&COUNTERS, site(name, label), make, |h| h.increment(n));
}

/// Record `value` in a histogram on the hot path; see [`count`].
pub fn observe(name: &'static str, label: Option<(&'static str, &'static str)>, value: f64) {
    let make = || histogram(name, label);
    with_kept(&HISTOGRAMS, site(name, label), make, |h| h.record(value));
}

/// Cancel `token` on SIGTERM or Ctrl-C.
pub async fn on_signal(token: tokio_util::sync::CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// Bind `addr`; when `JAM_ADDR_FILE` is set, write the bound address there, so a
/// supervisor (the tests) can use port 0 without racing for a free port.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if let Ok(path) = std::env::var("JAM_ADDR_FILE") {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, listener.local_addr()?.to_string())?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(listener)
}

/// How long a process waits, after its main task returned, for blocking work (a password
/// hash, a DNS lookup) before it exits anyway: SIGTERM always ends the process.
pub const BLOCKING_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Run `main` on a runtime that, once `main` returns, waits at most
/// [`BLOCKING_SHUTDOWN_GRACE`] for blocking tasks instead of waiting for them forever.
/// It has `JAM_THREADS` event-loop threads, else `default_threads`, else one per core; one
/// thread is tokio's current-thread runtime (the loop runs on the calling thread). An
/// invalid `JAM_THREADS` is reported by `Config::from_env` inside `main`.
pub fn run_main<F: std::future::Future>(default_threads: Option<usize>, main: F) -> F::Output {
    let env = std::env::vars().collect();
    let threads = crate::config::Config::threads_from_map(&env)
        .ok()
        .flatten()
        .or(default_threads);
    let mut rt = match threads {
        // One loop: tokio's current-thread scheduler, with no work-stealing machinery
        // (atomics, a run queue shared with no one, an idle thread to wake or not) on
        // every hand-over between tasks (decision 14).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n);
            rt
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt.enable_all().build().expect("tokio runtime");
    let out = rt.block_on(main);
    rt.shutdown_timeout(BLOCKING_SHUTDOWN_GRACE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_into_the_recorders_series() {
        prometheus();
        for n in [2, 3] {
            count("jam_test_kept_total", Some(("type", "a")), n);
        }
        count("jam_test_kept_total", Some(("type", "b")), 1);
        count("jam_test_kept_plain_total", None, 4);
        // Another thread keeps its own handles to the same series.
        std::thread::spawn(|| count("jam_test_kept_total", Some(("type", "a")), 10))
            .join()
            .unwrap();
        for v in [0.002, 0.2] {
            observe("jam_test_kept_seconds", Some(("stage", "x")), v);
        }
        let text = prometheus().render();
        let line = |l: &str| text.lines().any(|x| x == l);
        assert!(line("jam_test_kept_total{type=\"a\"} 15"), "{text}");
        assert!(line("jam_test_kept_total{type=\"b\"} 1"), "{text}");
        assert!(line("jam_test_kept_plain_total 4"), "{text}");
        assert!(line("jam_test_kept_seconds_count{stage=\"x\"} 2"), "{text}");
        assert!(
            line("jam_test_kept_seconds_bucket{stage=\"x\",le=\"0.0025\"} 1"),
            "{text}"
        );
    }
}
