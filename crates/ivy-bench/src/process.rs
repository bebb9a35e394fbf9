//! The gateway under test as a child process: free ports, a fresh data directory, start-up time, RSS and CPU.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the gateway could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning or talking to the process failed.
    #[error("gateway process: {0}")]
    Io(#[from] std::io::Error),
    /// It did not report readiness in time.
    #[error("the gateway did not start within {0:?}; its log is in {1}")]
    NotReady(Duration, PathBuf),
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// Meter port.
    pub meters: SocketAddr,
    /// MQTT port (embedded broker).
    pub mqtt: SocketAddr,
    /// HTTP port (`/health`, the API).
    pub http: SocketAddr,
    /// Time from spawn to "listening" on every port.
    pub startup: Duration,
    _data: tempfile::TempDir,
    log: PathBuf,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// The MQTT user the benchmarks log in as.
pub const USER: (&str, &str) = ("bench", "bench-password");

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl GatewayProcess {
    /// Starts `bin run` on free 127.0.0.1 ports with `env` on top of the benchmark defaults, and waits until it
    /// listens.
    pub fn spawn(bin: &Path, env: &[(&str, String)]) -> Result<Self, ProcessError> {
        let data = tempfile::tempdir()?;
        let (meters, mqtt, http) = (free_port()?, free_port()?, free_port()?);
        let log = data.path().join("gateway.log");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let bin = bin.to_path_buf();
        let (child, startup) = launch(&bin, &env, data.path(), (meters, mqtt, http), &log)?;
        Ok(GatewayProcess { child, meters, mqtt, http, startup, _data: data, log, bin, env })
    }

    /// Starts it again after it stopped or was killed: same ports, same data directory, same environment; its log
    /// continues in the same file.
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        let ports = (self.meters, self.mqtt, self.http);
        let (child, startup) = launch(&self.bin, &self.env, self._data.path(), ports, &self.log)?;
        self.child = child;
        self.startup = startup;
        Ok(())
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kb("VmRSS:").map(|kb| kb * 1024)
    }

    /// The two parts of the resident set, in bytes: anonymous memory (heap, stacks: what the process costs) and
    /// file-backed pages (mostly the binary's code and constants, shared with the page cache and reclaimable).
    pub fn rss_parts_bytes(&self) -> Option<(u64, u64)> {
        Some((self.status_kb("RssAnon:")? * 1024, self.status_kb("RssFile:")? * 1024))
    }

    /// A `kB` field of `/proc/PID/status`.
    fn status_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs_of(self.pid())
    }

    /// The gateway's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The gateway's data directory (its SQLite store is `ivy.db` in it).
    pub fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }

    /// Stops the gateway (SIGTERM, then SIGKILL after 15 s); true when it exited cleanly.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns `bin run` in `data` on `ports` (meters, MQTT, HTTP) and waits until it listens.
/// Environment added to every gateway this process starts (`ivy-bench --gateway-env`).
static EXTRA_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Sets the environment added to every gateway started from now on (first call wins).
pub fn set_extra_env(env: Vec<(String, String)>) {
    let _ = EXTRA_ENV.set(env);
}

fn launch(
    bin: &Path,
    env: &[(String, String)],
    data: &Path,
    (meters, mqtt, http): (SocketAddr, SocketAddr, SocketAddr),
    log: &Path,
) -> Result<(Child, Duration), ProcessError> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TCP_HOST", "127.0.0.1")
        .env("TCP_PORT", meters.port().to_string())
        .env("MQTT_HOST", "127.0.0.1")
        .env("MQTT_PORT", mqtt.port().to_string())
        .env("MQTT_WS_PORT", "0")
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", http.port().to_string())
        .env("DATA_DIR", data.join("data"))
        .env("MQTT_USERS", format!("{}:{}:admin", USER.0, USER.1))
        .env("LOG_LEVEL", "warn")
        .env("STATS_INTERVAL", "1")
        // A fleet comes from many addresses; the load generator from a few. The caps together fit the 20,000
        // open files of the benchmark machine (the gateway would otherwise lower the meters' cap to fit).
        .env("MAX_CONNECTIONS", "19100")
        .env("MQTT_MAX_CONNECTIONS", "400")
        .env("HTTP_MAX_CONNECTIONS", "200")
        // The subscriber is the backend being measured against, not a stuck viewer: queue like the original.
        .env("MQTT_SESSION_QUEUE_MESSAGES", "100000")
        .env("MAX_CONNECTIONS_PER_IP", "20000")
        .env("RATE_LIMITING_ENABLED", "false")
        .env("MAX_NEW_IDS_PER_IP_PER_MINUTE", "0")
        .env("POLLING_ENABLED", "false");
    for (k, v) in EXTRA_ENV.get().into_iter().flatten() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let started = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn()?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        let mut sent = false;
        // Keep draining so the gateway never blocks on a full pipe.
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && line.starts_with("ivy-gateway listening") {
                let _ = tx.send(Instant::now());
                sent = true;
            }
        }
    });
    let limit = Duration::from_secs(30);
    match rx.recv_timeout(limit) {
        Ok(at) => Ok((child, at.duration_since(started))),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let kept = std::env::temp_dir().join("ivy-bench-gateway.log");
            let _ = std::fs::copy(log, &kept);
            Err(ProcessError::NotReady(limit, kept))
        }
    }
}

/// CPU time process `pid` used so far (user + system), in seconds.
pub fn cpu_secs_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples a process's RSS and CPU over a window.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    wall: Instant,
    cpu: f64,
}

impl Usage {
    /// Starts a window.
    pub fn start(p: &GatewayProcess) -> Self {
        Usage { wall: Instant::now(), cpu: p.cpu_secs().unwrap_or(0.0) }
    }

    /// CPU use since the start, percent of one core.
    pub fn cpu_percent(&self, p: &GatewayProcess) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-3);
        (p.cpu_secs().unwrap_or(self.cpu) - self.cpu) / wall * 100.0
    }
}
