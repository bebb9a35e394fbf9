//! Real brokers and balancers for the upstream tests: Mosquitto (Debian `mosquitto`) and HAProxy (Debian
//! `haproxy`), each started from a configuration file the test writes, on an ephemeral 127.0.0.1 port, stopped and
//! restarted by PID; an MQTT subscriber at Mosquitto that survives broker restarts; and the gateway binary as a child
//! process (`ivy_bench::process::GatewayProcess`, the same helper the benchmarks use).
//!
//! Nothing is skipped: a missing binary fails the test with the package to install (`scripts/test` installs them).

// Each test module uses a part of it.
#![allow(dead_code)]

use crate::ca::TestCa;
pub use ivy_bench::process::{GatewayProcess, USER};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The path of `binary`, or a failure that says which Debian package provides it.
pub fn require(binary: &str, package: &str) -> PathBuf {
    ivy_bench::mosquitto::find_binary(binary, package)
        .unwrap_or_else(|e| panic!("these tests need a real `{binary}`: {e} (scripts/test installs it when missing)"))
}

/// A free TCP port on 127.0.0.1 (bound and released: the caller binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on `port`, while `child` runs; `Err` with why not.
fn wait_listening(child: &mut Child, port: u16, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on {port} after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a test's Mosquitto is set up.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Users `(name, password)`, written with `mosquitto_passwd`; none = anonymous clients allowed.
    pub users: Vec<(String, String)>,
    /// Serve MQTT over TLS only, with a server certificate (127.0.0.1, localhost) of a CA made for the broker.
    pub tls: bool,
}

/// A Mosquitto of one test (`ivy_bench::mosquitto`, the broker the upstream benchmark runs too), with the CA of
/// its TLS certificate when it has one. Retained messages and sessions survive [`Mosquitto::restart`].
pub struct Mosquitto {
    broker: ivy_bench::mosquitto::Mosquitto,
    /// The listener's port on 127.0.0.1.
    pub port: u16,
    /// The broker's CA (with [`MosquittoOptions::tls`]).
    pub ca: Option<TestCa>,
    certs: tempfile::TempDir,
}

impl Mosquitto {
    /// A plain broker allowing anonymous clients.
    pub fn start() -> Self {
        Self::start_with(MosquittoOptions::default())
    }

    /// A broker set up as `options` says.
    pub fn start_with(options: MosquittoOptions) -> Self {
        require("mosquitto", "mosquitto");
        let certs = tempfile::tempdir().unwrap();
        let ca = options.tls.then(|| TestCa::new("ivy upstream test broker CA"));
        let tls = ca.as_ref().map(|ca| {
            let (cert, key, _) = ca.server();
            let files = ivy_bench::mosquitto::TlsFiles {
                ca: certs.path().join("ca.pem"),
                cert: certs.path().join("server.pem"),
                key: certs.path().join("server.key"),
            };
            std::fs::write(&files.ca, &ca.pem).unwrap();
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            files
        });
        let broker = ivy_bench::mosquitto::Mosquitto::start(&ivy_bench::mosquitto::MosquittoOptions {
            users: options.users,
            tls,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Mosquitto { port: broker.port(), broker, ca, certs }
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        self.broker.log()
    }

    /// `mqtt://127.0.0.1:{port}`, or `mqtts://...` with TLS (what `MQTT_UPSTREAM_URL` takes).
    pub fn url(&self) -> String {
        self.broker.url()
    }

    /// The CA certificate file (PEM) the broker's certificate chains to (what `MQTT_UPSTREAM_CA` takes).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|_| self.certs.path().join("ca.pem"))
    }

    /// The running broker's PID.
    pub fn pid(&self) -> Option<u32> {
        self.broker.pid()
    }

    /// Stops it with SIGTERM (it saves retained messages and sessions).
    pub fn stop(&mut self) {
        self.broker.stop();
    }

    /// Kills it (SIGKILL): what it had not saved is lost.
    pub fn kill(&mut self) {
        self.broker.kill();
    }

    /// Starts it again (stopping it first if it runs) on the same port, configuration and persistence.
    pub fn restart(&mut self) {
        if let Err(e) = self.broker.restart() {
            panic!("mosquitto did not restart on port {}: {e}", self.port);
        }
    }
}

/// A gateway behind the balancer: its meter port and its HTTP port (health checks).
#[derive(Debug, Clone)]
pub struct Backend {
    /// Server name in the configuration.
    pub name: String,
    /// Where meters connect.
    pub meters: SocketAddr,
    /// Where `/health` answers.
    pub http: SocketAddr,
}

impl Backend {
    /// The backend of a running gateway process.
    pub fn of(name: &str, gw: &GatewayProcess) -> Self {
        Backend { name: name.into(), meters: gw.meters, http: gw.http }
    }
}

/// HAProxy in TCP mode in front of gateways: meters connect to [`Haproxy::port`], balanced round-robin over the
/// backends whose `/health` answers 200. Its admin socket drives servers (maintenance, ready) and reads their state.
pub struct Haproxy {
    dir: tempfile::TempDir,
    /// The frontend's port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl Haproxy {
    /// The configuration the tests use (`deploy/haproxy.cfg` is the deployment's; a test checks that one parses).
    pub fn config(port: u16, socket: &Path, backends: &[Backend]) -> String {
        let mut c = format!(
            "global\n    maxconn 4000\n    stats socket {} mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
             frontend meters\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\n\
             backend gateways\n    balance roundrobin\n    option httpchk\n\
             \x20   http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost\n\
             \x20   http-check expect status 200\n    default-server inter 500ms fall 2 rise 1\n",
            socket.display()
        );
        for b in backends {
            c += &format!("    server {} {} check port {}\n", b.name, b.meters, b.http.port());
        }
        c
    }

    /// `haproxy -c -f path`: Ok, or what it reported.
    pub fn check(path: &Path) -> Result<String, String> {
        let binary = require("haproxy", "haproxy");
        let out = Command::new(binary).arg("-c").arg("-f").arg(path).output().map_err(|e| e.to_string())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() { Ok(text) } else { Err(text) }
    }

    /// Starts HAProxy in front of `backends` and waits until every backend is up.
    pub fn start(backends: &[Backend]) -> Self {
        let binary = require("haproxy", "haproxy");
        let dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, Self::config(port, &dir.path().join("admin.sock"), backends)).unwrap();
            if let Err(e) = Self::check(&cfg) {
                panic!("the test's haproxy.cfg does not parse: {e}");
            }
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("haproxy.log")).unwrap();
            // -db: stay in the foreground (no daemon), so the PID is the proxy's.
            let mut child = Command::new(&binary)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            match wait_listening(&mut child, port, Duration::from_secs(10)) {
                Ok(()) => {
                    let proxy = Haproxy { dir, port, child: Some(child) };
                    for b in backends {
                        proxy.wait_state(&b.name, "UP", Duration::from_secs(20));
                    }
                    return proxy;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!(
            "haproxy did not start: {last}\n{}",
            std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
        );
    }

    /// The frontend address meters connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One command on the admin socket; returns the answer.
    pub fn command(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The state of server `name` (`UP`, `DOWN`, `MAINT`, ...), from `show stat`.
    pub fn state(&self, name: &str) -> Option<String> {
        let stat = self.command("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let status = header.iter().position(|h| *h == "status")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&name))
            .and_then(|f| f.get(status).map(|s| s.split_whitespace().next().unwrap_or_default().to_owned()))
    }

    /// Waits until server `name` is in `state` (e.g. `UP`, `DOWN`).
    pub fn wait_state(&self, name: &str, state: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.state(name);
            if now.as_deref() == Some(state) {
                return;
            }
            assert!(Instant::now() < deadline, "haproxy server {name} not {state} after {limit:?}: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Puts server `name` in maintenance (no new connections) or back to ready.
    pub fn set_ready(&self, name: &str, ready: bool) {
        let state = if ready { "ready" } else { "maint" };
        let answer = self.command(&format!("set server gateways/{name} state {state}"));
        assert!(answer.trim().is_empty(), "haproxy refused: {answer}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A message received at the broker.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload as sent.
    pub payload: Vec<u8>,
    /// The payload as JSON (`Null` when it is not).
    pub json: Value,
    /// Retained flag.
    pub retain: bool,
    /// Redelivery flag (QoS 1 duplicates).
    pub dup: bool,
}

/// Who connects to the test broker and how.
#[derive(Debug, Clone)]
pub struct Login {
    /// Client id (a persistent session is kept under it).
    pub client_id: String,
    /// User and password.
    pub credentials: Option<(String, String)>,
    /// Trust only this CA (TLS brokers).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Login {
    /// An anonymous plain client.
    pub fn anonymous(client_id: &str) -> Self {
        Login { client_id: client_id.into(), credentials: None, tls: None }
    }

    /// With credentials.
    pub fn user(client_id: &str, user: &str, password: &str) -> Self {
        Login { client_id: client_id.into(), credentials: Some((user.into(), password.into())), tls: None }
    }

    /// Over TLS trusting `broker`'s CA.
    pub fn over_tls(mut self, broker: &Mosquitto) -> Self {
        self.tls = broker.ca.as_ref().map(TestCa::client);
        self
    }
}

/// An MQTT 3.1.1 subscriber at the test broker with a persistent session (QoS 1, clean session off): it keeps
/// reconnecting through broker restarts, and subscribes again if the broker lost its session.
pub struct Subscriber {
    /// The client (to publish, e.g. command requests).
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Subscriber {
    /// Connects, subscribes to `filters` at QoS 1 and waits for the SUBACKs.
    pub async fn connect(broker: &Mosquitto, login: Login, filters: &[&str]) -> Self {
        let mut o = MqttOptions::new(login.client_id.clone(), "127.0.0.1", broker.port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = &login.credentials {
            o.set_credentials(u, p);
        }
        if let Some(tls) = &login.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut ev) = AsyncClient::new(o, 100_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let again = client.clone();
        tokio::spawn(async move {
            let mut subacks = 0usize;
            let mut connected_once = false;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !connected_once || !ack.session_present {
                            for f in &filters {
                                let _ = again.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                        }
                        if !connected_once && filters.is_empty() {
                            let _ = ready_tx.send(Ok(()));
                        }
                        connected_once = true;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == filters.len() {
                            let _ = ready_tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let m = Received {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            json,
                            retain: p.retain,
                            dup: p.dup,
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !connected_once {
                            let _ = ready_tx.send(Err(e.to_string()));
                        }
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => panic!("subscriber could not connect to {}: {e}", broker.url()),
            _ => panic!("subscriber: no SUBACK from {} within 10 s", broker.url()),
        }
        Subscriber { client, rx }
    }

    /// The next message within `secs`.
    pub async fn next(&mut self, secs: f64) -> Option<Received> {
        tokio::time::timeout(Duration::from_secs_f64(secs), self.rx.recv()).await.ok().flatten()
    }

    /// Waits for the first message matching `pred`.
    pub async fn wait(&mut self, what: &str, secs: u64, mut pred: impl FnMut(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("subscriber closed while waiting for {what}"),
                Err(_) => panic!("timed out after {secs} s waiting for {what}"),
            }
        }
    }

    /// Every message received within `ms` milliseconds.
    pub async fn collect(&mut self, ms: u64) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload.into()).await.unwrap();
    }
}

/// The retained message of `topic` at `broker`, as a new clean-session client receives it (`None` if there is none
/// within `secs`).
pub async fn retained(broker: &Mosquitto, login: Login, topic: &str, secs: f64) -> Option<Received> {
    let mut o = MqttOptions::new(login.client_id.clone(), "127.0.0.1", broker.port);
    o.set_clean_session(true);
    if let Some((u, p)) = &login.credentials {
        o.set_credentials(u, p);
    }
    if let Some(tls) = &login.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    let (client, mut ev) = AsyncClient::new(o, 10);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let found = loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == topic && p.retain => {
                let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                break Some(Received { topic: p.topic, payload: p.payload.to_vec(), json, retain: true, dup: p.dup });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reading the retained {topic}: {e}"),
            Err(_) => break None,
        }
    };
    let _ = client.disconnect().await;
    found
}

/// The environment that points a gateway at `broker` as its upstream (`MQTT_UPSTREAM_*`), with `gateway_id`,
/// logging at `info` (tests read the log).
pub fn upstream_env(broker: &Mosquitto, gateway_id: &str, login: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MQTT_UPSTREAM_URL", broker.url()),
        ("GATEWAY_ID", gateway_id.to_owned()),
        ("LOG_LEVEL", "info".to_owned()),
    ];
    if let Some((u, p)) = login {
        env.push(("MQTT_UPSTREAM_USERNAME", u.to_owned()));
        env.push(("MQTT_UPSTREAM_PASSWORD", p.to_owned()));
    }
    if let Some(ca) = broker.ca_file() {
        env.push(("MQTT_UPSTREAM_CA", ca.display().to_string()));
    }
    env
}

/// The gateway binary of this build, started with `env` (see `GatewayProcess::spawn` for the defaults: ephemeral
/// ports, a fresh data directory, the admin user [`USER`]).
pub fn gateway(env: &[(&str, String)]) -> GatewayProcess {
    GatewayProcess::spawn(Path::new(env!("CARGO_BIN_EXE_ivy-gateway")), env).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET path` on a gateway's HTTP API as [`USER`]; the status and the JSON body.
pub async fn get_json(gw: &GatewayProcess, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", gw.http);
    let r = reqwest::Client::new()
        .get(url)
        .basic_auth(USER.0, Some(USER.1))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `cond` every 50 ms until it holds, or fails after `secs`.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
