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

/// Run `main` on a multi-threaded runtime that, once `main` returns, waits at most
/// [`BLOCKING_SHUTDOWN_GRACE`] for blocking tasks instead of waiting for them forever.
/// It has `JAM_THREADS` event-loop threads, else `default_threads`, else one per core. An
/// invalid `JAM_THREADS` is reported by `Config::from_env` inside `main`.
pub fn run_main<F: std::future::Future>(default_threads: Option<usize>, main: F) -> F::Output {
    let env = std::env::vars().collect();
    let threads = crate::config::Config::threads_from_map(&env)
        .ok()
        .flatten()
        .or(default_threads);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    let out = rt.block_on(main);
    rt.shutdown_timeout(BLOCKING_SHUTDOWN_GRACE);
    out
}
