//! A real Mosquitto broker (Debian package `mosquitto`) as a child process, for the upstream benchmark and the
//! upstream integration tests: a configuration file written into a temporary directory (listener on a free
//! 127.0.0.1 port, optional users through `mosquitto_passwd`, optional TLS from PEM files, persistence in the same
//! directory so a restart keeps retained messages and sessions), stopped and restarted by PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the broker could not be run.
#[derive(Debug, thiserror::Error)]
pub enum MosquittoError {
    /// A binary is not installed.
    #[error("`{binary}` is not installed; install the Debian package: apt-get install -y {package}")]
    Missing {
        /// The binary.
        binary: String,
        /// The package that provides it.
        package: String,
    },
    /// Files or processes.
    #[error("mosquitto: {0}")]
    Io(#[from] std::io::Error),
    /// A step failed; what the broker or the tool said.
    #[error("mosquitto: {0}")]
    Failed(String),
}

/// The path of `binary` (in `PATH`, then the sbin directories Debian puts daemons in).
pub fn find_binary(binary: &str, package: &str) -> Result<PathBuf, MosquittoError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(binary);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(MosquittoError::Missing { binary: binary.into(), package: package.into() })
}

/// PEM files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate clients may be asked for (`cafile`).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// How the broker is set up.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Users `(name, password)`; none = anonymous clients allowed.
    pub users: Vec<(String, String)>,
    /// Serve MQTT over TLS only.
    pub tls: Option<TlsFiles>,
    /// More configuration lines, appended as they are.
    pub extra: String,
}

/// A running (or stopped) broker.
#[derive(Debug)]
pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    binary: PathBuf,
    tls: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The user this process runs as: Mosquitto started by root drops to user `mosquitto` unless told to stay, and
/// could then not read its files.
fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Mosquitto {
    /// Writes the configuration and starts the broker; returns once it accepts connections.
    pub fn start(options: &MosquittoOptions) -> Result<Self, MosquittoError> {
        let binary = find_binary("mosquitto", "mosquitto")?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        if !options.users.is_empty() {
            let passwd = find_binary("mosquitto_passwd", "mosquitto")?;
            let file = dir.path().join("passwd");
            for (n, (user, password)) in options.users.iter().enumerate() {
                let mut cmd = Command::new(&passwd);
                cmd.arg("-b");
                if n == 0 {
                    cmd.arg("-c");
                }
                let out = cmd.arg(&file).arg(user).arg(password).output()?;
                if !out.status.success() {
                    return Err(MosquittoError::Failed(format!(
                        "mosquitto_passwd: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
        }
        let mut broker = Mosquitto { dir, port: 0, child: None, binary, tls: options.tls.is_some() };
        // The port is found free, then bound by Mosquitto: someone may take it in between; try another.
        let mut last = MosquittoError::Failed("not started".into());
        for _ in 0..5 {
            broker.port = free_port()?;
            broker.write_config(options)?;
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn write_config(&self, options: &MosquittoOptions) -> Result<(), MosquittoError> {
        let d = self.dir.path();
        let mut c = format!("listener {} 127.0.0.1\n", self.port);
        if let Some(tls) = &options.tls {
            c += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            );
        }
        if options.users.is_empty() {
            c += "allow_anonymous true\n";
        } else {
            c += &format!("allow_anonymous false\npassword_file {}\n", d.join("passwd").display());
        }
        c += &format!("persistence true\npersistence_location {}/\n", d.join("data").display());
        // A disconnected persistent subscriber keeps every QoS 1 message (outage tests count them all).
        c += "max_queued_messages 0\nmax_queued_bytes 0\n";
        c += &format!("user {}\n", current_user());
        c += "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
        c += "connection_messages true\nlog_timestamp true\n";
        c += &options.extra;
        std::fs::write(d.join("mosquitto.conf"), c)?;
        Ok(())
    }

    fn launch(&mut self) -> Result<(), MosquittoError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MosquittoError::Failed(format!("exited with {status}: {}", self.log())));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MosquittoError::Failed(format!("not listening on {} after 10 s", self.port)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The listener's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the configuration, persistence and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the broker logged so far (every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `mqtt://127.0.0.1:{port}` (`mqtts://` with TLS): what `MQTT_UPSTREAM_URL` takes.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The running broker's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it with SIGTERM (it saves retained messages and sessions; SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (SIGKILL): what it had not saved is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (stopping it first if it runs): same port, configuration and persistence.
    pub fn restart(&mut self) -> Result<(), MosquittoError> {
        self.stop();
        self.launch()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
