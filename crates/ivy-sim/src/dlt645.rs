//! Simulated DL/T 645 meters: one TCP connection carrying one or several meter addresses (a DTU on an RS-485 bus).

use crate::{Faults, ReplyLatency, SimStats};
use ivy_protocol::dlt645::control::function;
use ivy_protocol::dlt645::registers::{Catalogue, RELAY_OPEN_BIT, RELAY_STATUS_DI, encode_date, encode_time};
use ivy_protocol::dlt645::relay::{decrypt_relay_body, parse_relay_body};
use ivy_protocol::dlt645::{Address, ErrorFlags, Frame, Framer, FramerEvent, RelayAuth, RelayCommand};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How the meter makes itself known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identify {
    /// Sends a read-address reply (`93`) right after connecting.
    TalkFirst,
    /// Sends nothing until asked (the gateway probes with read-address).
    Silent,
}

/// One meter on the bus.
#[derive(Debug)]
pub struct Dlt645Meter {
    /// Its address.
    pub address: Address,
    /// Register values by DI (engineering units; encoded with the catalogue format).
    pub values: Mutex<HashMap<u32, f64>>,
    /// Registers answered with "no requested data".
    pub missing: Mutex<Vec<u32>>,
    /// Relay open (tripped).
    pub relay_open: AtomicBool,
    /// Credentials the meter expects for relay control (`None` accepts any).
    pub auth: Option<RelayAuth>,
    /// AES key the relay block is encrypted with, if any.
    pub aes_key: Option<[u8; 16]>,
    /// Last time set by broadcast (unix seconds, meter local).
    pub clock_set: Mutex<Option<ivy_protocol::dlt645::MeterDateTime>>,
    /// Time-varying realistic values (instead of the fixed ones).
    pub dynamic: bool,
}

impl Dlt645Meter {
    /// A meter with realistic fixed values for the default poll groups.
    pub fn new(address: Address) -> Self {
        let values: HashMap<u32, f64> = [
            (0x0000_0000, 1234.56),
            (0x0001_0000, 1200.00),
            (0x0001_0100, 400.10),
            (0x0001_0200, 300.20),
            (0x0002_0000, 34.56),
            (0x0201_0100, 230.1),
            (0x0201_0200, 229.8),
            (0x0201_0300, 231.0),
            (0x0202_0100, 5.234),
            (0x0203_0000, 1.2345),
            (0x0204_0000, 0.1234),
            (0x0205_0000, 1.25),
            (0x0206_0000, 0.987),
            (0x0280_0002, 50.02),
            (0x0280_0007, 31.5),
        ]
        .into_iter()
        .collect();
        Dlt645Meter {
            address,
            values: Mutex::new(values),
            missing: Mutex::new(Vec::new()),
            relay_open: AtomicBool::new(false),
            auth: None,
            aes_key: None,
            clock_set: Mutex::new(None),
            dynamic: false,
        }
    }

    /// Sets a register value.
    pub fn set(&self, di: u32, value: f64) {
        if let Ok(mut v) = self.values.lock() {
            v.insert(di, value);
        }
    }

    /// A register value.
    pub fn get(&self, di: u32) -> Option<f64> {
        self.values.lock().ok().and_then(|v| v.get(&di).copied())
    }

    fn value_bytes(&self, di: u32, tick: u64) -> Option<Result<Vec<u8>, ErrorFlags>> {
        let no_data = Err(ErrorFlags(0x02));
        if self.missing.lock().is_ok_and(|m| m.contains(&di)) {
            return Some(no_data);
        }
        match di {
            d if d == u32::from(RELAY_STATUS_DI) => {
                let word: u16 = if self.relay_open.load(Ordering::Relaxed) { RELAY_OPEN_BIT } else { 0 };
                return Some(Ok(word.to_le_bytes().to_vec()));
            }
            0x0400_0101 => return Some(Ok(encode_date(2026, 1, 30, 5))),
            0x0400_0102 => return Some(Ok(encode_time(4, 34, 19))),
            0x0400_0401 => return Some(Ok(self.address.to_wire().to_vec())),
            _ => {}
        }
        let base = self.get(di)?;
        let value = if self.dynamic { crate::values::vary(di, base, tick, self.address.to_wire()[0]) } else { base };
        Some(Catalogue::builtin().encode_number(di.into(), value).map_err(|_| ErrorFlags(0x01)))
    }
}

/// A DTU connection with its meters.
#[derive(Debug, Clone)]
pub struct Dlt645Config {
    /// The meters behind this connection.
    pub meters: Vec<Arc<Dlt645Meter>>,
    /// How they identify.
    pub identify: Identify,
    /// Reply latency.
    pub latency: ReplyLatency,
    /// Do not answer anything (a dead meter on a live modem).
    pub mute: bool,
    /// Faults to inject.
    pub faults: Faults,
}

impl Dlt645Config {
    /// `meters` that send their address first and answer at once, without faults.
    pub fn talk_first(meters: Vec<Arc<Dlt645Meter>>) -> Self {
        Dlt645Config {
            meters,
            identify: Identify::TalkFirst,
            latency: ReplyLatency::default(),
            mute: false,
            faults: Faults::default(),
        }
    }
}

/// Control of a running simulated connection.
#[derive(Debug)]
pub enum Control {
    /// Close the socket (FIN).
    Close,
    /// Reset the socket abruptly (RST).
    Reset,
    /// Send raw bytes.
    SendRaw(Vec<u8>),
}

/// A running simulated DL/T 645 connection.
#[derive(Debug)]
pub struct Dlt645Sim {
    /// Counters.
    pub stats: Arc<SimStats>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    /// The local address of the connection.
    pub local_addr: SocketAddr,
}

impl Dlt645Sim {
    /// Connects to the gateway and serves requests until closed.
    pub async fn connect(gateway: SocketAddr, cfg: Dlt645Config) -> std::io::Result<Self> {
        Self::connect_from(gateway, None, cfg).await
    }

    /// Connects from a given local address (spreads load over 127.0.0.x).
    pub async fn connect_from(
        gateway: SocketAddr,
        local: Option<std::net::IpAddr>,
        cfg: Dlt645Config,
    ) -> std::io::Result<Self> {
        Self::connect_counted(gateway, local, cfg, Arc::new(SimStats::default())).await
    }

    /// Connects from a given local address, counting into `stats` (shared across reconnections of one meter).
    pub async fn connect_counted(
        gateway: SocketAddr,
        local: Option<std::net::IpAddr>,
        cfg: Dlt645Config,
        stats: Arc<SimStats>,
    ) -> std::io::Result<Self> {
        let stream = crate::connect(gateway, local).await?;
        let local_addr = stream.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(serve(stream, cfg, stats.clone(), rx));
        Ok(Dlt645Sim { stats, control: tx, task, local_addr })
    }

    /// Sends a control command.
    pub async fn control(&self, c: Control) {
        let _ = self.control.send(c).await;
    }

    /// Whether the connection task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Closes the connection and waits for the task.
    pub async fn close(self) {
        let _ = self.control.send(Control::Close).await;
        let _ = self.task.await;
    }
}

async fn serve(mut stream: TcpStream, cfg: Dlt645Config, stats: Arc<SimStats>, mut control: mpsc::Receiver<Control>) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 4096];
    if cfg.identify == Identify::TalkFirst
        && let Some(m) = cfg.meters.first()
    {
        let _ = stream.write_all(&Frame::read_address_reply(m.address).encode()).await;
        for m in cfg.meters.iter().skip(1) {
            let _ = stream.write_all(&Frame::read_address_reply(m.address).encode()).await;
        }
    }
    if let Some(garbage) = cfg.faults.garbage_on_connect.as_ref() {
        let _ = stream.write_all(garbage).await;
        stats.faults.fetch_add(1, Ordering::Relaxed);
    }
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Close) | None => {
                    let _ = stream.shutdown().await;
                    return;
                }
                Some(Control::Reset) => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Some(Control::SendRaw(bytes)) => {
                    let _ = stream.write_all(&bytes).await;
                }
            },
            n = crate::read_slowly(&mut stream, &mut buf, cfg.faults.slow_read) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                framer.push(buf.get(..n).unwrap_or_default());
                let mut pending: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
                drain_requests(&mut framer, &mut pending);
                while let Some(req) = pending.pop_front() {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    if cfg.mute {
                        continue;
                    }
                    tick += 1;
                    let replies = answer(&cfg, &req, tick, &stats);
                    if replies.is_empty() {
                        continue;
                    }
                    let delay = cfg.latency.sample();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    // A request that arrived while this one was still unanswered means the gateway interleaved.
                    let before = pending.len();
                    while let Ok(n) = stream.try_read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        framer.push(buf.get(..n).unwrap_or_default());
                    }
                    drain_requests(&mut framer, &mut pending);
                    if pending.len() > before {
                        stats.overlaps.fetch_add(1, Ordering::Relaxed);
                    }
                    for mut reply in replies {
                        if cfg.faults.corrupt_checksum.load(Ordering::Relaxed) {
                            if let Some(cs) = reply.len().checked_sub(2).and_then(|i| reply.get_mut(i)) {
                                *cs = cs.wrapping_add(1);
                            }
                            stats.faults.fetch_add(1, Ordering::Relaxed);
                        }
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                        stats.replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Moves complete requests (frames not from a meter) from the framer to `pending`.
fn drain_requests(framer: &mut Framer, pending: &mut std::collections::VecDeque<Frame>) {
    while let Some(ev) = framer.next_event() {
        if let FramerEvent::Frame(f) = ev
            && !f.control.from_meter()
        {
            pending.push_back(f);
        }
    }
}

/// The meter(s)' replies to one request (none for broadcasts and unknown addresses).
fn answer(cfg: &Dlt645Config, req: &Frame, tick: u64, stats: &SimStats) -> Vec<Vec<u8>> {
    let f = req.control.function();
    if f == function::BROADCAST_TIME {
        let t = ivy_protocol::dlt645::MeterDateTime::from_bcd_ssmmhhddmmyy(req.data()).ok();
        for m in &cfg.meters {
            if let Ok(mut c) = m.clock_set.lock() {
                *c = t;
            }
        }
        stats.time_syncs.fetch_add(1, Ordering::Relaxed);
        return Vec::new();
    }
    if f == function::READ_ADDRESS && req.address == Address::WILDCARD {
        return cfg.meters.iter().map(|m| Frame::read_address_reply(m.address).encode()).collect();
    }
    let Some(m) = cfg.meters.iter().find(|m| m.address == req.address) else { return Vec::new() };
    let frame = match f {
        function::READ => {
            let Some(di) = req.data_id() else { return Vec::new() };
            match m.value_bytes(di.into(), tick) {
                Some(Ok(v)) => Frame::read_reply(m.address, di, &v, false)
                    .unwrap_or_else(|_| Frame::error_reply(m.address, f, ErrorFlags(1))),
                Some(Err(flags)) => Frame::error_reply(m.address, f, flags),
                None => Frame::error_reply(m.address, f, ErrorFlags(0x02)),
            }
        }
        function::RELAY_CONTROL => relay(m, req, stats),
        function::READ_ADDRESS => Frame::read_address_reply(m.address),
        _ => Frame::error_reply(m.address, f, ErrorFlags(0x01)),
    };
    vec![frame.encode()]
}

fn relay(m: &Dlt645Meter, req: &Frame, stats: &SimStats) -> Frame {
    let f = function::RELAY_CONTROL;
    let Ok(body) = <[u8; 16]>::try_from(req.data()) else { return Frame::error_reply(m.address, f, ErrorFlags(0x01)) };
    let plain = match &m.aes_key {
        Some(k) => decrypt_relay_body(&body, k),
        None => body,
    };
    let Some(parsed) = parse_relay_body(&plain) else { return Frame::error_reply(m.address, f, ErrorFlags(0x01)) };
    if let Some(auth) = &m.auth {
        let expected = auth.wire_prefix();
        if plain.get(..8) != Some(&expected[..]) {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Frame::error_reply(m.address, f, ErrorFlags(0x04));
        }
    }
    match RelayCommand::from_code(parsed.n1) {
        Some(RelayCommand::Trip) => m.relay_open.store(true, Ordering::Relaxed),
        Some(RelayCommand::CloseDirect | RelayCommand::CloseAllowed) => m.relay_open.store(false, Ordering::Relaxed),
        Some(_) => {}
        None => return Frame::error_reply(m.address, f, ErrorFlags(0x01)),
    }
    stats.relay_operations.fetch_add(1, Ordering::Relaxed);
    Frame::ack_reply(m.address, f)
}
