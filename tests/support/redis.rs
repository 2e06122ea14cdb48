//! Real Redis servers for tests: each on a free port of its own, in a
//! temporary directory, with AOF persistence (as the README asks of an audit
//! Redis), stopped on drop. `restart` keeps the port and the data.
//! [`SentinelGroup`]: a primary, its replicas and three Redis Sentinels
//! watching them, for failovers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    /// Extra `redis-server` arguments.
    extra: Vec<String>,
}

/// A port free on 127.0.0.1 now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl RedisServer {
    /// Starts a persistent (AOF, `appendfsync everysec`) server.
    pub fn start() -> RedisServer {
        Self::start_with(true)
    }

    /// Starts a server that keeps nothing on disk (for the persistence check).
    pub fn start_ephemeral() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a persistent server on which `CONFIG` is not available, as on
    /// managed Redis services.
    pub fn start_without_config_command() -> RedisServer {
        Self::start_with_args(true, &["--rename-command", "CONFIG", ""])
    }

    fn start_with(aof: bool) -> RedisServer {
        Self::start_with_args(aof, &[])
    }

    /// A persistent server whose replicas sync at once (no diskless-sync
    /// delay), for a replicated group; a replica of `primary` when given.
    pub fn start_in_group(primary: Option<u16>) -> RedisServer {
        let mut args = vec!["--repl-diskless-sync-delay".to_string(), "0".to_string()];
        if let Some(p) = primary {
            args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), p.to_string()]);
        }
        Self::start_with_args(true, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn start_with_args(aof: bool, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir,
            aof,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.aof { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg("everysec")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server abruptly (SIGKILL); data written with AOF survives
    /// up to the last fsync.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGKILL without waiting (the process is reaped on drop), for a
    /// caller that shares the server.
    pub fn sigkill(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of a child not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
        }
    }

    /// Stops the server politely (SHUTDOWN flushes the AOF).
    pub fn stop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .status();
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command to the server on `port` (a Redis server or a sentinel).
pub fn command<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Sentinel on a free port, with its (rewritable) configuration in a
/// temporary directory; stopped on drop.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Watches the master `name` on `master_port`: down after 1 s without an
    /// answer, failed over when `quorum` sentinels agree.
    pub fn start(name: &str, master_port: u16, quorum: u32) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 4\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        let sentinel = Sentinel { child, port, _dir: dir };
        wait_until(
            &format!("sentinel on port {port} answers"),
            Duration::from_secs(10),
            || command::<String>(port, &["PING"]).is_ok(),
        );
        sentinel
    }

    /// The port of the master `name` as this sentinel names it.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let addr: Vec<String> = command(self.port, &["SENTINEL", "get-master-addr-by-name", name]).ok()?;
        addr.get(1)?.parse().ok()
    }

    /// How many replicas this sentinel knows of `name` (not down), and how
    /// many other sentinels.
    pub fn sees(&self, name: &str) -> (usize, usize) {
        let up = |list: redis::RedisResult<Vec<std::collections::HashMap<String, String>>>| {
            list.map(|l| {
                l.iter()
                    .filter(|r| !r.get("flags").is_some_and(|f| f.contains("down")))
                    .count()
            })
            .unwrap_or(0)
        };
        (
            up(command(self.port, &["SENTINEL", "replicas", name])),
            up(command(self.port, &["SENTINEL", "sentinels", name])),
        )
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, `n` replicas of it and three sentinels (quorum 2) watching
/// them as master `m`, each on a free port.
pub struct SentinelGroup {
    pub name: String,
    pub primary: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelGroup {
    /// Returns once every replica is in sync and every sentinel knows the
    /// replicas and the two other sentinels (so that a failover can start).
    pub fn start(n: usize) -> SentinelGroup {
        let name = "m".to_string();
        let primary = RedisServer::start_in_group(None);
        let replicas: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_in_group(Some(primary.port)))
            .collect();
        wait_until("the replicas are in sync", Duration::from_secs(15), || {
            command::<String>(primary.port, &["INFO", "replication"])
                .is_ok_and(|info| info.matches("state=online").count() == n)
        });
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(&name, primary.port, 2)).collect();
        wait_until(
            "the sentinels know the replicas and each other",
            Duration::from_secs(20),
            || sentinels.iter().all(|s| s.sees(&name) == (n, 2)),
        );
        SentinelGroup {
            name,
            primary,
            replicas,
            sentinels,
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/m/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{}/0", hosts.join(","), self.name)
    }

    /// The master's port once every sentinel names the same one, other than
    /// `not`; panics after `timeout`.
    pub fn wait_master_other_than(&self, not: u16, timeout: Duration) -> u16 {
        let mut found = 0;
        wait_until("the sentinels agree on a new master", timeout, || {
            let named: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.master_port(&self.name)).collect();
            match named[0] {
                Some(p) if p != not && named.iter().all(|n| *n == Some(p)) => {
                    found = p;
                    true
                }
                _ => false,
            }
        });
        found
    }

    /// The server on `port`, among the primary and the replicas.
    pub fn server(&self, port: u16) -> &RedisServer {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .find(|s| s.port == port)
            .expect("a server of the group")
    }
}
