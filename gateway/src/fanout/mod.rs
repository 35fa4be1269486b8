//! Fan-out of worker events to local sockets: the routing [`table`] and the [`dispatch`] loop.

pub mod dispatch;
pub mod table;

pub use table::{ConnHandle, Table};
