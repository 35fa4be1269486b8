//! The sync engine's pure logic: where the host is now ([`drift`]), how far a participant
//! is from it and how good that is, and what to do about it ([`correction`]).
//! No I/O, no clocks: every function takes `now`.

pub mod correction;
pub mod drift;
pub mod sim;

pub use correction::{decide, Correction, CorrectionState, SyncParams};
pub use drift::{drift_ms, expected_position, quality, Quality, Report};
