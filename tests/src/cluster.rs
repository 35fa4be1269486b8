//! The usual cluster of a test: a private Redis, a fresh database, one worker and two
//! gateways ("gw-a", "gw-b"), all separate processes. Dropped together.

use crate::procs::{self, Proc};
use crate::services::{PrivateRedis, TestDb};

pub struct Cluster {
    pub redis: PrivateRedis,
    pub db: TestDb,
    pub worker: Proc,
    pub a: Proc,
    pub b: Proc,
}

impl Cluster {
    pub async fn start(worker_env: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> Self {
        let redis = PrivateRedis::start();
        let db = TestDb::create().await;
        let worker = procs::worker(&redis.url(), &db.url, worker_env).await;
        let a = procs::gateway(&redis.url(), "gw-a", gateway_env).await;
        let b = procs::gateway(&redis.url(), "gw-b", gateway_env).await;
        Self {
            redis,
            db,
            worker,
            a,
            b,
        }
    }
}
