//! Private Redis instances and throw-away PostgreSQL databases. Nothing here touches
//! the shared instances' data: a test owns what it starts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server on a free port, killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> Self {
        // A port picked free may be taken before redis binds it: then try another.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Self::spawn(port);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child: Some(child),
                        port,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    fn spawn(port: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)")
    }

    /// Entries waiting on jam's command streams (acknowledged ones are deleted).
    pub fn queued_commands(&self) -> usize {
        let cli = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .arg("-p")
                .arg(self.port.to_string())
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        cli(&["--scan", "--pattern", "jam:cmd:*"])
            .lines()
            .map(|stream| cli(&["XLEN", stream]).trim().parse::<usize>().unwrap_or(0))
            .sum()
    }

    /// Wait until at least `n` commands are queued.
    pub async fn wait_queued(&self, n: usize) {
        let t = Instant::now();
        while self.queued_commands() < n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no command reached the stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::spawn(self.port));
        self.wait_ready();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("JAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database, dropped when this goes out of scope.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = pg_admin_url();
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running (the test command starts it)");
        tokio::spawn(conn);
        let name = format!("jam_test_{}", &jam_shared::ids::unique()[..12]);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &pg_admin_url(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A TCP forwarder on a loopback port to a real server, that a test can open and cut: a
/// dependency that comes up late or goes away, without touching the shared server.
pub struct TcpGate {
    pub port: u16,
    target: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpGate {
    /// A closed gate in front of `target` (host:port): nothing listens on `port` yet.
    pub fn closed(target: &str) -> Self {
        Self {
            port: free_port(),
            target: target.to_string(),
            tasks: Default::default(),
        }
    }

    /// Start listening and forwarding.
    pub async fn open(&self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Stop listening and drop every forwarded connection.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.cut();
    }
}
