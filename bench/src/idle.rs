//! `--idle N`: what an idle authenticated connection costs a gateway in resident memory.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::connect;
use crate::procstat::rss_kib;
use crate::Args;

pub async fn run(a: &Args, jwt: &jam_shared::auth::JwtVerifier, n: usize) -> anyhow::Result<()> {
    let pid = *a.pid.first().context("--idle needs the gateway's --pid")?;
    let before = rss_kib(pid);
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(connect(&a.url[0], jwt, &format!("idle-{i}")).await?);
    }
    let opened = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "{n} idle connections opened in {opened:.1} s; gateway RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection",
        before / 1024.0,
        after / 1024.0,
        (after - before) / n as f64
    );
    drop(conns);
    Ok(())
}
