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

/// A redis-server on a free port, killed on drop. It saves nothing by itself; a
/// [`snapshot`](Self::snapshot) is loaded again by the next [`restart`](Self::restart).
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

fn redis_dir(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("jam-redis-{}-{port}", std::process::id()))
}

/// Spawn a server on a free port and wait until it accepts connections. A port picked
/// free may be taken before the server binds it: then try another.
fn start_on_free_port(spawn: impl Fn(u16) -> Child) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("redis-server did not start");
}

impl PrivateRedis {
    pub fn start() -> Self {
        let (child, port) = start_on_free_port(Self::spawn);
        Self {
            child: Some(child),
            port,
        }
    }

    fn spawn(port: u16) -> Child {
        let dir = redis_dir(port);
        std::fs::create_dir_all(&dir).unwrap();
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
                "--dir",
                &dir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)")
    }

    /// Entries waiting on jam's command streams (acknowledged ones are deleted).
    pub fn queued_commands(&self) -> usize {
        self.cli(&["--scan", "--pattern", "jam:cmd:*"])
            .lines()
            .map(|stream| {
                self.cli(&["XLEN", stream])
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Commands a worker has read and not acknowledged yet (the consumer group's pending
    /// entries on jam's command streams).
    pub fn read_commands(&self) -> usize {
        self.cli(&["--scan", "--pattern", "jam:cmd:*"])
            .lines()
            .map(|stream| {
                let pending = self.cli(&["XPENDING", stream, jam_shared::keys::WORKER_GROUP]);
                pending
                    .lines()
                    .next()
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Wait until a worker has read exactly `n` commands it has not acknowledged.
    pub async fn wait_read(&self, n: usize) {
        let t = Instant::now();
        while self.read_commands() != n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} commands read and unacknowledged, not {n}",
                self.read_commands()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
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

    /// Write the dataset to disk now (`SAVE`): a later restart comes back to this state.
    pub fn snapshot(&self) {
        let out = cli(self.port, &["SAVE"]);
        assert!(out.contains("OK"), "SAVE: {out}");
    }

    /// `CLIENT PAUSE ms ALL`: every client's commands wait (a stalled Redis).
    pub fn pause(&self, ms: u64) {
        let out = cli(self.port, &["CLIENT", "PAUSE", &ms.to_string(), "ALL"]);
        assert!(out.contains("OK"), "CLIENT PAUSE: {out}");
    }

    /// For `how_long`, destroy `group` on every stream of `streams` as fast as Redis
    /// answers: each time a worker creates it again, it is gone an instant later, as if
    /// Redis had restarted empty between any two of the worker's commands.
    pub fn keep_destroying_groups(
        &self,
        group: &str,
        streams: Vec<String>,
        how_long: Duration,
    ) -> std::thread::JoinHandle<()> {
        use std::io::{BufRead, BufReader, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let group = group.to_string();
        std::thread::spawn(move || {
            let mut replies = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let t = Instant::now();
            while t.elapsed() < how_long {
                let mut batch = Vec::new();
                for s in &streams {
                    batch.extend(resp(&["XGROUP", "DESTROY", s, &group]));
                }
                conn.write_all(&batch).unwrap();
                // One line per reply (an integer, or an error for a missing stream).
                for _ in &streams {
                    line.clear();
                    replies.read_line(&mut line).unwrap();
                }
            }
        })
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
        let _ = std::fs::remove_dir_all(redis_dir(self.port));
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
        // An aborted accept task drops its listener only when the runtime gets to it, and
        // an outgoing connection may briefly hold the port: retry the bind for a while.
        let mut tries = 0;
        let l = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("gate port {} stays busy: {e}", self.port),
            }
        };
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

/// A redis-server with extra arguments on a free port (cluster nodes, replicas, sentinels),
/// killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[String], dir: &std::path::Path, sentinel: bool) -> Self {
        let (child, port) = start_on_free_port(|port| {
            let mut args: Vec<String> = Vec::new();
            if sentinel {
                let conf = dir.join(format!("sentinel-{port}.conf"));
                std::fs::write(&conf, extra.join("\n") + "\n").unwrap();
                args.push(conf.display().to_string());
                args.push("--sentinel".into());
            }
            args.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ]
                .map(String::from),
            );
            args.push(dir.display().to_string());
            if !sentinel {
                args.extend(extra.iter().map(|a| a.replace("{port}", &port.to_string())));
            }
            Command::new("redis-server")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed")
        });
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The non-empty lines of a redis-cli answer (an empty array prints one empty line).
/// A command in Redis's wire protocol (RESP arrays of bulk strings).
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

fn cli_lines(port: u16, args: &[&str]) -> Vec<String> {
    cli(port, args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn scratch_dir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("jam-{what}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Redis Cluster of three masters on free loopback ports, no replicas.
pub struct RedisCluster {
    nodes: Vec<Server>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = scratch_dir("cluster");
        let nodes: Vec<Server> = (0..3)
            .map(|i| {
                let args = [
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{i}-{{port}}.conf"),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ];
                Server::start(&args, &dir, false)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(|s| s.as_str()));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli").args(&create).output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        while !nodes
            .iter()
            .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "cluster never got ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, dir }
    }

    /// `redis-cluster://first?node=second&node=third`.
    pub fn url(&self) -> String {
        let p: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    }

    /// How many sharded pub/sub channels matching `pattern` each master has subscribers on.
    pub fn shard_channels_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| cli_lines(n.port, &["PUBSUB", "SHARDCHANNELS", pattern]).len())
            .collect()
    }

    /// How many plain pub/sub channels matching `pattern` have subscribers (per node).
    pub fn plain_channels(&self, pattern: &str) -> usize {
        self.nodes
            .iter()
            .map(|n| cli_lines(n.port, &["PUBSUB", "CHANNELS", pattern]).len())
            .sum()
    }

    pub fn plain_channel_names(&self, pattern: &str) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| cli_lines(n.port, &["PUBSUB", "CHANNELS", pattern]))
            .collect()
    }

    /// How many keys matching `pattern` each master holds.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| cli_lines(n.port, &["--scan", "--pattern", pattern]).len())
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, one replica and one sentinel (quorum 1) watching them as `mymaster`.
pub struct RedisSentinel {
    servers: Vec<Server>,
    sentinel: Server,
    dir: std::path::PathBuf,
}

impl RedisSentinel {
    pub const SERVICE: &'static str = "mymaster";

    pub fn start() -> Self {
        let dir = scratch_dir("sentinel");
        let master = Server::start(&[], &dir, false);
        let replica = Server::start(
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            &dir,
            false,
        );
        let t = Instant::now();
        while !cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "replica never synced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let conf = [
            format!(
                "sentinel monitor {} 127.0.0.1 {} 1",
                Self::SERVICE,
                master.port
            ),
            format!("sentinel down-after-milliseconds {} 1000", Self::SERVICE),
            format!("sentinel failover-timeout {} 5000", Self::SERVICE),
        ];
        let sentinel = Server::start(&conf, &dir, true);
        let s = Self {
            servers: vec![master, replica],
            sentinel,
            dir,
        };
        let t = Instant::now();
        while !cli(s.sentinel.port, &["SENTINEL", "replicas", Self::SERVICE]).contains("slave") {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "sentinel never saw the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinel.port,
            Self::SERVICE
        )
    }

    /// The port of the current master, as the sentinel sees it.
    pub fn master_port(&self) -> u16 {
        let out = cli(
            self.sentinel.port,
            &["SENTINEL", "get-master-addr-by-name", Self::SERVICE],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Ask the sentinel to fail over to the replica and wait until it has.
    pub async fn failover(&self) {
        let before = self.master_port();
        let ok = cli(self.sentinel.port, &["SENTINEL", "failover", Self::SERVICE]);
        assert!(ok.contains("OK"), "SENTINEL FAILOVER: {ok}");
        let t = Instant::now();
        loop {
            let now = self.master_port();
            if now != before
                && now != 0
                && cli(now, &["INFO", "replication"]).contains("role:master")
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "failover did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
