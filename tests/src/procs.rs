//! jam's binaries as child processes, on free ports, killed on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// target/<profile>/ next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub struct Proc {
    child: Option<Child>,
    pub name: String,
    /// host:port of its HTTP listener.
    pub addr: String,
    env: HashMap<String, String>,
    /// The variable that tells the process where to listen.
    addr_var: String,
    addr_file: PathBuf,
}

impl Proc {
    fn spawn(name: &str, addr_var: &str, env: HashMap<String, String>) -> Self {
        // The process binds port 0 and writes the address it got: no free-port race.
        let mut env = env;
        env.insert(addr_var.to_string(), "127.0.0.1:0".to_string());
        let addr_file =
            std::env::temp_dir().join(format!("jam-addr-{}", jam_shared::ids::unique()));
        env.insert("JAM_ADDR_FILE".to_string(), addr_file.display().to_string());
        let mut p = Self {
            child: None,
            name: name.to_string(),
            addr: String::new(),
            env,
            addr_var: addr_var.to_string(),
            addr_file,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::env::var("JAM_TEST_LOG").is_ok();
        let child = Command::new(bin(&self.name))
            .envs(&self.env)
            .env(
                "JAM_LOG",
                std::env::var("JAM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Wait until the process has bound its port and `/health` answers.
    pub async fn ready(mut self) -> Self {
        self.wait_bound().await;
        self.wait_path("/health").await;
        self
    }

    async fn wait_bound(&mut self) {
        let t = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(&self.addr_file) {
                if !a.is_empty() {
                    self.addr = a;
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("{} exited during start-up: {status}", self.name);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{} did not bind its port",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_path(&self, path: &str) {
        let t = Instant::now();
        let url = format!("http://{}{path}", self.addr);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{} did not answer {path}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Wait for the process to exit by itself; returns whether it did within `t`.
    pub async fn wait_exit(&mut self, t: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < t {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().unwrap().is_some() {
                    self.child = None;
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Start the same binary again with the same environment and port.
    pub async fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.addr_file);
        if !self.addr.is_empty() {
            self.env.insert(self.addr_var.clone(), self.addr.clone());
        }
        self.start();
        self.wait_bound().await;
        self.wait_path("/health").await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

fn base_env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [("JAM_JWT_SECRET", crate::SECRET)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

pub async fn gateway(redis: &str, instance: &str, extra: &[(&str, &str)]) -> Proc {
    let mut env = base_env(extra);
    env.insert("JAM_REDIS_URL".into(), redis.into());
    env.insert("JAM_INSTANCE_ID".into(), instance.into());
    Proc::spawn("jam-gateway", "JAM_LISTEN_ADDR", env)
        .ready()
        .await
}

pub async fn worker(redis: &str, db: &str, extra: &[(&str, &str)]) -> Proc {
    worker_named(redis, db, "worker-1", extra).await
}

pub async fn worker_named(redis: &str, db: &str, name: &str, extra: &[(&str, &str)]) -> Proc {
    worker_starting(redis, db, name, extra).ready().await
}

/// A worker process, not waited for (it may be waiting for its dependencies).
pub fn worker_starting(redis: &str, db: &str, name: &str, extra: &[(&str, &str)]) -> Proc {
    let mut env = base_env(extra);
    env.insert("JAM_REDIS_URL".into(), redis.into());
    env.insert("JAM_DATABASE_URL".into(), db.into());
    env.insert("JAM_INSTANCE_ID".into(), name.into());
    // Tests run side by side against one PostgreSQL (100 connections by default), several
    // workers each: a few connections per worker (the default is 16).
    env.entry("JAM_DATABASE_POOL_SIZE".into())
        .or_insert_with(|| "4".into());
    Proc::spawn("jam-worker", "JAM_WORKER_LISTEN_ADDR", env)
}

/// The standalone binary: in-memory bus and store.
pub async fn standalone(extra: &[(&str, &str)]) -> Proc {
    Proc::spawn("jam", "JAM_LISTEN_ADDR", base_env(extra))
        .ready()
        .await
}
