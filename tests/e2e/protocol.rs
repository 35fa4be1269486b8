//! The protocol scenarios against the standalone binary (in-memory bus and store).

use jam_tests::{procs, scenario};

#[tokio::test]
async fn standalone_sessions_and_chat() {
    let jam = procs::standalone(&[]).await;
    scenario::sessions_and_chat(&jam.ws_url(), &jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_bad_input() {
    let jam = procs::standalone(&[]).await;
    scenario::bad_input(&jam.ws_url()).await;
}

#[tokio::test]
async fn standalone_tenants() {
    let jam = procs::standalone(&[]).await;
    scenario::tenants(&jam.ws_url(), &jam.ws_url()).await;
}
