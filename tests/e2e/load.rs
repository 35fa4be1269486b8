//! jam-load, the project's load tool, against real servers: its rooms scenario counts every
//! delivery, once, over the standalone and over a cluster, and a step that cannot be
//! delivered shows up as lost, not as a clean run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use jam_tests::cluster::Cluster;
use jam_tests::procs::{self, bin};
use serde_json::Value;

fn load_command(urls: &[String], pids: &[u32]) -> Command {
    let mut cmd = Command::new(bin("jam-load"));
    for u in urls {
        cmd.args(["--url", u]);
    }
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(["--secret", jam_tests::SECRET, "--json", "--timeout", "60"]);
    cmd
}

/// Run `jam-load --rooms` with `args` against `urls`; one JSON object per step (and per
/// slice of a `--timeline-ms`, before its step's).
fn rooms(urls: &[String], pids: &[u32], args: &[&str]) -> Vec<Value> {
    let out = load_command(urls, pids).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "jam-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every member sends rate × seconds messages and receives everyone else's.
fn assert_complete(step: &Value, rooms: u64, members: u64, rate: u64, seconds: u64) {
    let per_member = rate * seconds;
    assert_eq!(step["sent"], rooms * members * per_member, "{step}");
    let expected = rooms * members * per_member * (members - 1);
    assert_eq!(step["expected"], expected, "{step}");
    assert_eq!(step["received"], expected, "{step}");
    assert_eq!(step["lost"], 0, "{step}");
    assert_eq!(step["duplicates"], 0, "{step}");
    assert!(step["p99_ms"].as_f64().unwrap() > 0.0, "{step}");
    assert!(step["server_cpu_s"].as_f64().unwrap() > 0.0, "{step}");
}

#[tokio::test]
async fn rooms_count_every_delivery_once_on_the_standalone() {
    let jam = procs::standalone(&[]).await;
    let (url, pid) = (jam.ws_url(), jam.pid());
    let args = [
        "--rooms",
        "4",
        "--members",
        "3",
        "--member-rate",
        "5,10",
        "--seconds",
        "2",
        "--timeline-ms",
        "500",
    ];
    let lines = tokio::task::spawn_blocking(move || rooms(&[url], &[pid], &args))
        .await
        .unwrap();
    let (slices, steps): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|l| l["timeline_ms"].is_u64());
    assert_eq!(steps.len(), 2, "one line per step of the ramp");
    assert_complete(&steps[0], 4, 3, 5, 2);
    assert_complete(&steps[1], 4, 3, 10, 2);
    // Each step's slices of send time hold every one of its deliveries, once.
    let in_slices: u64 = slices
        .iter()
        .map(|s| s["deliveries"].as_u64().unwrap())
        .sum();
    let received: u64 = steps.iter().map(|s| s["received"].as_u64().unwrap()).sum();
    assert_eq!(in_slices, received);
    assert!(
        slices.len() >= 8,
        "two steps of 2 s in slices of 500 ms: {slices:?}"
    );
    assert!(slices.iter().all(|s| s["p99_ms"].as_f64().unwrap() > 0.0));
}

#[tokio::test]
async fn rooms_span_both_gateways_of_a_cluster_and_a_stopped_worker_shows_as_lost() {
    let c = Cluster::start(&[], &[]).await;
    let urls = [c.a.ws_url(), c.b.ws_url()];
    let pids = [c.a.pid(), c.b.pid(), c.worker.pid()];
    let args = [
        "--rooms",
        "3",
        "--members",
        "4",
        "--member-rate",
        "5",
        "--seconds",
        "2",
    ];
    let (u, p) = (urls.clone(), pids);
    let steps = tokio::task::spawn_blocking(move || rooms(&u, &p, &args))
        .await
        .unwrap();
    assert_complete(&steps[0], 3, 4, 5, 2);

    // Stopped once the rooms are seated, the worker applies nothing: every delivery of
    // that step is missing when the tool stops waiting, and it says so.
    let mut cmd = load_command(&urls, &pids);
    cmd.args([
        "--rooms",
        "2",
        "--members",
        "2",
        "--member-rate",
        "2",
        "--seconds",
        "1",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let seated = tokio::task::spawn_blocking(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("seated"))
    });
    assert!(seated.await.unwrap(), "the rooms were never seated");
    c.worker.signal("STOP");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    c.worker.signal("CONT");
    assert!(out.status.success());
    let step: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(step["expected"], 2 * 2 * 2, "{step}");
    assert_eq!(step["received"], 0, "{step}");
    assert_eq!(step["lost"], 8, "{step}");
}
