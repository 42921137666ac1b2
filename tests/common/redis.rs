//! `redis-server` processes on loopback for the fleet tests: plain, over TLS (optionally
//! asking for a client certificate), with an ACL user, without persistence.
//!
//! Needs `redis-server` and `redis-cli` (Debian package `redis-server`; `make deps`
//! installs it). Without them the tests are skipped with a message, unless
//! `KEYGATE_REQUIRE_REDIS` is set (`make test` sets it), in which case they fail.

use super::{eventually, free_port, gen_certs, poll_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The password of the `admin` user the tests use when a Redis has an ACL.
const ADMIN_PASSWORD: &str = "test-admin-password-0123456789";

/// How a test Redis is set up.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// Serve TLS only (certificates from certs/gen-test-certs.sh, in `dir/certs`).
    pub tls: bool,
    /// With `tls`: refuse clients without a certificate from the test CA.
    pub client_auth: bool,
    /// An ACL user (name, password, rules), the default user switched off, and an
    /// `admin` user for the tests' own probes.
    pub acl: Option<(String, String, String)>,
}

/// One `redis-server`.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub opts: RedisOptions,
}

/// Whether redis-server is installed; panics when it is not but the run requires it.
pub fn redis_installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("KEYGATE_REQUIRE_REDIS").is_none(),
            "redis-server is not installed and KEYGATE_REQUIRE_REDIS is set (make deps installs it)"
        );
        eprintln!(
            "SKIPPED: redis-server is not installed (apt-get install redis-server, or make deps)"
        );
    }
    installed
}

impl Redis {
    /// A plain one, or `None` (test skipped) when redis-server is not installed.
    pub fn start() -> Option<Redis> {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> Option<Redis> {
        if !redis_installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        if opts.tls {
            gen_certs(&dir.path().join("certs"));
        }
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            opts,
        };
        r.restart();
        Some(r)
    }

    /// The test PKI this Redis's certificate comes from.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// (Re)start on the same port and wait until it answers PING.
    pub fn restart(&mut self) {
        self.child = Some(spawn_redis(self.dir.path(), &self.config()));
        eventually("redis-server answering PING", || {
            (self.cli(&["PING"]) == "PONG").then_some(())
        });
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let mut c = format!("bind 127.0.0.1\nsave \"\"\nappendonly no\ndir {d}\n");
        if self.opts.tls {
            let certs = self.certs();
            let certs = certs.display();
            c += &format!(
                "port 0\ntls-port {}\ntls-cert-file {certs}/server.crt\ntls-key-file {certs}/server.key\ntls-ca-cert-file {certs}/ca.crt\ntls-auth-clients {}\n",
                self.port,
                if self.opts.client_auth { "yes" } else { "no" }
            );
        } else {
            c += &format!("port {}\n", self.port);
        }
        if let Some((user, pass, rules)) = &self.opts.acl {
            // The tests look in as `admin`; keygate gets only its own user.
            c += &format!(
                "user default off\nuser {user} on >{pass} {rules}\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
            );
        }
        c
    }

    /// Run `redis-cli` against it (TLS and the ACL user as configured); its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.opts.tls {
            let certs = self.certs();
            cmd.arg("--tls").arg("--cacert").arg(certs.join("ca.crt"));
            if self.opts.client_auth {
                cmd.arg("--cert").arg(certs.join("client.crt"));
                cmd.arg("--key").arg(certs.join("client.key"));
            }
        }
        if self.opts.acl.is_some() {
            cmd.args([
                "--user",
                "admin",
                "--pass",
                ADMIN_PASSWORD,
                "--no-auth-warning",
            ]);
        }
        let out = cmd.args(args).stderr(Stdio::null()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Send one inline command over plain TCP; the first line of the answer.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Kill it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port `p` whose cluster bus port `p + 10000` is free too.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Write `config` as `dir/redis.conf` and start `redis-server` on it, logging to
/// `dir/redis.log`.
fn spawn_redis(dir: &std::path::Path, config: &str) -> Child {
    let conf = dir.join("redis.conf");
    std::fs::write(&conf, config).unwrap();
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    Command::new("redis-server")
        .arg(&conf)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start redis-server")
}

/// A Redis Cluster on loopback: `primaries` primaries with one replica each
/// (`redis-cli --cluster create`), a one-second node timeout so that a replica takes over
/// a killed primary within seconds.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> Option<RedisCluster> {
        if !redis_installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = vec![];
        for _ in 0..2 * primaries {
            let port = cluster_port();
            let d = dir.path().join(port.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let child = spawn_redis(&d, &format!(
                "bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\ndir {}\ncluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\ncluster-require-full-coverage no\ncluster-replica-validity-factor 0\nrepl-diskless-sync-delay 0\n",
                d.display()
            ));
            nodes.push((port, Some(child)));
        }
        let c = RedisCluster { nodes, dir };
        for &(port, _) in &c.nodes {
            eventually("cluster node answering PING", || {
                (c.cli(port, &["PING"]) == "PONG").then_some(())
            });
        }
        let addrs: Vec<String> = c
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok();
        Some(c)
    }

    /// `redis-cli -c` against one node; its trimmed stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Every running node reports `cluster_state:ok`, the same number of primaries with
    /// slots as at the start, and every replica has finished its sync (a replica that has
    /// not cannot take over).
    ///
    /// Six `redis-server`s gossiping, syncing replicas and answering a `redis-cli` per probe
    /// share two cores with the rest of the suite (the other cluster test starts six more),
    /// so this waits up to 30 s, probing every 100 ms; the panic names the nodes not ready.
    pub fn wait_ok(&self) {
        let want = self.nodes.len() / 2;
        let mut not_ready = vec![];
        let mut primaries = vec![];
        let ok = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            not_ready = self
                .running()
                .filter(|&p| {
                    let info = self.cli(p, &["INFO", "replication"]);
                    !(self
                        .cli(p, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                        && (info.contains("role:master") || info.contains("master_link_status:up")))
                })
                .collect();
            primaries = self.primaries();
            (not_ready.is_empty() && primaries.len() == want).then_some(())
        });
        assert!(
            ok.is_some(),
            "timed out after 30 s waiting for cluster_state:ok everywhere with replicas in sync: \
             nodes not ready {not_ready:?}, primaries {primaries:?} (want {want})"
        );
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
    }

    /// Ports of the running primaries.
    pub fn primaries(&self) -> Vec<u16> {
        self.running()
            .filter(|&p| self.cli(p, &["ROLE"]).lines().next() == Some("master"))
            .collect()
    }

    /// A seed URL per running node.
    pub fn urls(&self) -> Vec<String> {
        self.running()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Kill one node (as a crash would).
    pub fn kill(&mut self, port: u16) {
        for (p, c) in &mut self.nodes {
            if *p == port {
                if let Some(mut child) = c.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Every key of every primary matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = vec![];
        for p in self.primaries() {
            let out = self.cli(p, &["--scan", "--pattern", pattern]);
            keys.extend(out.lines().filter(|l| !l.is_empty()).map(String::from));
        }
        keys
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|(p, _)| *p).collect();
        for p in ports {
            self.kill(p);
        }
        let _ = &self.dir;
    }
}
