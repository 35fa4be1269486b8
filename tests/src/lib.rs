//! The end-to-end harness: real binaries as child processes, a private redis-server per
//! test, a fresh PostgreSQL database per test, and a WebSocket client.

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod metrics;
pub mod procs;
pub mod scenario;
pub mod services;

pub use client::Client;

/// The secret every test process signs and verifies with.
pub const SECRET: &str = "e2e-test-secret";

pub fn token(sub: &str, name: &str, tenant: Option<&str>) -> String {
    let jwt = jam_shared::auth::JwtVerifier::new(SECRET);
    jwt.sign(&jam_shared::auth::claims_for(sub, name, tenant, 3600))
}

/// An `authorization` header value for a REST call as `sub` (the default tenant).
pub fn bearer(sub: &str, name: &str) -> String {
    format!("Bearer {}", token(sub, name, None))
}
