//! Every end-to-end test, one module per area: real processes over real Redis and
//! PostgreSQL (each test starts its own Redis and creates its own database).

mod backend;
mod chaos;
mod cluster;
mod load;
mod operations;
mod presence;
mod protocol;
mod security;
mod sync;
mod topologies;
mod workers;
