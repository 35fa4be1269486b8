//! SIGTERM ends a process within a bounded time even while a blocking task is running:
//! tokio would otherwise wait for the blocking pool on runtime drop, for minutes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// target/<profile>/examples/<name>, built by `cargo test` with this test.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn sigterm_during_a_long_blocking_task_exits_within_the_grace() {
    let mut child = Command::new(example("blocked_shutdown"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("examples are built by `cargo test -p jam-shared` (not with --test alone)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running {:?} after SIGTERM",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The runtime gives blocking work 3 s, then lets the process go.
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}
