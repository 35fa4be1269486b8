//! Password checks off the single writer: a bounded pool of blocking threads. A join that
//! needs its password checked waits here; every other command of the partition goes on.

use std::sync::Arc;

use jam_shared::protocol::Command;
use tokio::sync::{mpsc, Semaphore};

/// Checks running at once (each is one argon2 hash with the server's parameters).
const CONCURRENT: usize = 2;
/// Checks waiting; beyond that a join is refused with UNAVAILABLE.
const QUEUED: usize = 256;

pub struct Verified {
    pub cmd: Command,
    pub ok: bool,
}

pub struct Verifier {
    permits: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    done: mpsc::Sender<Verified>,
}

impl Verifier {
    /// A verifier and the receiver its outcomes arrive on.
    pub fn new() -> (Self, mpsc::Receiver<Verified>) {
        let (done, rx) = mpsc::channel(QUEUED);
        (
            Self {
                permits: Arc::new(Semaphore::new(CONCURRENT)),
                waiting: Arc::new(Semaphore::new(QUEUED)),
                done,
            },
            rx,
        )
    }

    /// Start checking `password` of `cmd` against `hash`; false when the queue is full.
    pub fn submit(&self, cmd: Command, hash: String, password: String) -> bool {
        let Ok(slot) = self.waiting.clone().try_acquire_owned() else {
            metrics::counter!("jam_password_checks_refused_total").increment(1);
            return false;
        };
        let (permits, done) = (self.permits.clone(), self.done.clone());
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let t = std::time::Instant::now();
            let ok =
                tokio::task::spawn_blocking(move || jam_shared::password::verify(&hash, &password))
                    .await
                    .unwrap_or(false);
            metrics::histogram!("jam_password_check_seconds").record(t.elapsed().as_secs_f64());
            drop(slot);
            let _ = done.send(Verified { cmd, ok }).await;
        });
        true
    }
}
