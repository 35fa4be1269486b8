//! The wire protocol: what clients send ([`action`]), what the worker keeps and shows
//! ([`model`]), the frames it emits ([`event`]) and the bus envelope ([`envelope`]).

pub mod action;
pub mod command;
pub mod envelope;
pub mod event;
pub mod nul;
pub mod sync;

pub use action::Action;
pub use command::Command;
pub use envelope::Envelope;
