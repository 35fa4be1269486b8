//! Prints the sync simulation's figures: `cargo run -p jam-worker --release --example sync_sim`.

use jam_worker::sync::sim::{run, SimConfig};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    for seed in [1, 7, 42] {
        let cfg = SimConfig {
            seed,
            ..Default::default()
        };
        let desc = format!(
            "{} participants, clocks ±{} ms, one-way latency {:?} ms, speed error ±{}%, {} s simulated, seed {}",
            cfg.participants,
            cfg.clock_skew_ms,
            cfg.latency_ms,
            cfg.speed_error * 100.0,
            cfg.duration.as_secs(),
            seed
        );
        let r = rt.block_on(run(cfg));
        println!("{desc}");
        println!(
            "  |drift| p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} samples; seeks/participant-hour {:.2}; rate commands {}",
            r.p50_abs_drift_ms, r.p95_abs_drift_ms, r.max_abs_drift_ms, r.samples, r.seeks_per_participant_hour, r.rate_commands
        );
    }
}
