//! jam-shared: the wire protocol, the bus and store seams with their real and in-memory
//! implementations, configuration, JWT verification and telemetry set-up.

pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod error;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod password;
pub mod protocol;
pub mod telemetry;

pub use error::ErrorCode;
