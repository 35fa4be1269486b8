//! A process built like jam's binaries (`telemetry::run_main` + `on_signal`) with a blocking
//! task that would run for a minute: started by `tests/shutdown.rs`, which sends SIGTERM and
//! times the exit.

use std::time::Duration;

fn main() {
    jam_shared::telemetry::run_main(None, async {
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(jam_shared::telemetry::on_signal(stop.clone()));
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(60)));
        println!("ready");
        stop.cancelled().await;
    })
}
