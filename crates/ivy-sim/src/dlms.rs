//! A simulated IVY EM114070-style DLMS/COSEM meter: heartbeat on connect and periodically, AARQ/GET/SET/ACTION/RLRQ
//! answered over the IEC 62056-47 wrapper, and EventNotification/DataNotification pushes.

use crate::{ReplyLatency, SimStats};
use ivy_protocol::dlms::apdu::{
    Aare, ActionRequest, ActionResponse, Apdu, AttributeDescriptor, Conformance, DataAccessResult, DataNotification,
    EventForm, EventNotification, GetRequest, GetResponse, InvokeIdAndPriority, Release, SetRequest, SetResponse,
};
use ivy_protocol::dlms::registry::{CLOCK, DISCONNECT_CONTROL, LOGICAL_DEVICE_NAME, ObisRegistry, SERIAL_NUMBER};
use ivy_protocol::dlms::units::unit_code;
use ivy_protocol::dlms::{CosemDateTime, Data, Obis};
use ivy_protocol::wrapper::{self, Framer, FramerEvent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Which push APDU to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushForm {
    /// EventNotification, standard layout (time presence byte).
    EventStandard,
    /// EventNotification, EM114070/original layout (no presence byte).
    EventEm114070,
    /// DataNotification with `{OBIS, value}` pairs.
    DataNotification,
    /// DataNotification with `{OBIS, value, {scaler, unit}}` triples.
    DataTriples,
    /// DataNotification with a flat `OBIS, value, OBIS, value, ...` structure.
    DataFlat,
    /// DataNotification with a list identifier string, then flat pairs.
    DataListFlat,
    /// DataNotification whose first element is the push object list, then the values in that order.
    DataSelfDescribing,
    /// DataNotification with values only, in [`DlmsMeter::push_object_list`] order (the gateway needs
    /// `dlms.push_objects`).
    DataPositional,
}

impl PushForm {
    /// Every form, for tests and `--help`.
    pub const ALL: [PushForm; 8] = [
        PushForm::EventStandard,
        PushForm::EventEm114070,
        PushForm::DataNotification,
        PushForm::DataTriples,
        PushForm::DataFlat,
        PushForm::DataListFlat,
        PushForm::DataSelfDescribing,
        PushForm::DataPositional,
    ];

    /// Whether it is a DataNotification (all values at once) rather than an EventNotification (one value).
    pub fn is_data(&self) -> bool {
        !matches!(self, PushForm::EventStandard | PushForm::EventEm114070)
    }
}

/// One value of a push: the object, its class, its value and (for registers) its scaler_unit.
#[derive(Debug, Clone, PartialEq)]
pub struct PushEntry {
    /// Logical name.
    pub obis: Obis,
    /// Interface class.
    pub class_id: u16,
    /// Attribute 2.
    pub value: Data,
    /// Attribute 3 (scaler, unit code), when it has one.
    pub scaler_unit: Option<(i8, u8)>,
}

/// The push setup object whose list describes a self-describing push (IEC 62056-6-2 class 40).
pub const PUSH_SETUP: Obis = Obis([0, 0, 25, 9, 0, 255]);

/// The DataNotification body of `entries` in `form` (`None` for the EventNotification forms). `list_id` is the
/// leading string of [`PushForm::DataListFlat`].
pub fn encode_push_body(form: PushForm, entries: &[PushEntry], list_id: &str) -> Option<Data> {
    let name = |e: &PushEntry| Data::OctetString(e.obis.bytes().to_vec());
    let flat = || entries.iter().flat_map(|e| [name(e), e.value.clone()]);
    Some(match form {
        PushForm::EventStandard | PushForm::EventEm114070 => return None,
        PushForm::DataNotification => {
            Data::Array(entries.iter().map(|e| Data::Structure(vec![name(e), e.value.clone()])).collect())
        }
        PushForm::DataTriples => Data::Array(
            entries
                .iter()
                .map(|e| {
                    let mut s = vec![name(e), e.value.clone()];
                    if let Some((scaler, unit)) = e.scaler_unit {
                        s.push(Data::Structure(vec![Data::Integer(scaler), Data::Enum(unit)]));
                    }
                    Data::Structure(s)
                })
                .collect(),
        ),
        PushForm::DataFlat => Data::Structure(flat().collect()),
        PushForm::DataListFlat => {
            Data::Structure(std::iter::once(Data::VisibleString(list_id.as_bytes().to_vec())).chain(flat()).collect())
        }
        PushForm::DataSelfDescribing => {
            let describe = |class_id: u16, obis: Obis, attribute: i8| {
                Data::Structure(vec![
                    Data::LongUnsigned(class_id),
                    Data::OctetString(obis.bytes().to_vec()),
                    Data::Integer(attribute),
                    Data::LongUnsigned(0),
                ])
            };
            // The list describes itself first (its own attribute 2 is the first value: the list).
            let list = Data::Array(
                std::iter::once(describe(40, PUSH_SETUP, 2))
                    .chain(entries.iter().map(|e| describe(e.class_id, e.obis, 2)))
                    .collect(),
            );
            Data::Structure(std::iter::once(list).chain(entries.iter().map(|e| e.value.clone())).collect())
        }
        PushForm::DataPositional => Data::Structure(entries.iter().map(|e| e.value.clone()).collect()),
    })
}

/// The meter clock a push carries as its capture time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushClock {
    /// The meter's local time is UTC + this many minutes.
    pub offset_minutes: i32,
    /// Send the deviation (else `0x8000`, not specified, as the EM114070 does).
    pub deviation: bool,
}

impl PushClock {
    /// The meter's clock at `unix_ms`.
    pub fn at(&self, unix_ms: i64) -> CosemDateTime {
        let mut t = CosemDateTime::from_unix_utc(unix_ms.div_euclid(1000) + i64::from(self.offset_minutes) * 60);
        t.hundredths = Some((unix_ms.rem_euclid(1000) / 10) as u8);
        t.deviation = self.deviation.then(|| i16::try_from(-self.offset_minutes).unwrap_or(0));
        t.clock_status = if self.deviation { 0x00 } else { 0xFF };
        t
    }
}

/// One object of the meter: its class and the value of attribute 2 (and its scaler_unit for registers).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Interface class.
    pub class_id: u16,
    /// Attribute 2.
    pub value: Data,
    /// Attribute 3 of registers: (scaler, unit code).
    pub scaler_unit: Option<(i8, u8)>,
}

/// The meter's state.
#[derive(Debug)]
pub struct DlmsMeter {
    /// The 12-character id of the heartbeat (and the serial number).
    pub id: String,
    /// Logical device name.
    pub logical_device_name: String,
    /// Objects by OBIS.
    pub objects: Mutex<HashMap<Obis, Object>>,
    /// Whether the disconnect control object exists.
    pub has_disconnect_control: bool,
    /// Disconnector output state (true = connected/closed).
    pub output_state: AtomicBool,
    /// Disconnector control state (0 disconnected, 1 connected, 2 ready for reconnection).
    pub control_state: AtomicU8,
    /// Conformance offered in the AARE.
    pub conformance: Conformance,
    /// Refuse associations permanently (AARE result 1, authentication-failure), e.g. a wrong LLS password; can be
    /// changed while connected.
    pub reject_association: AtomicBool,
    /// AARQs received (accepted or not).
    pub association_requests: std::sync::atomic::AtomicU64,
    /// Last clock set by the gateway.
    pub clock_set: Mutex<Option<CosemDateTime>>,
    /// Vary the register values over time.
    pub dynamic: bool,
    /// Stamp pushes with the meter clock (DataNotification date-time, EventNotification time).
    pub push_clock: Option<PushClock>,
    /// The list identifier of [`PushForm::DataListFlat`] pushes.
    pub list_id: String,
}

impl DlmsMeter {
    /// An EM114070 with the objects and scalers confirmed on the real meter (SPEC 2.3).
    pub fn em114070(id: &str) -> Self {
        let registry = ObisRegistry::builtin();
        let mut objects = HashMap::new();
        let raw: [(&str, Data); 10] = [
            ("ACTIVE_POWER_IMPORT", Data::DoubleLong(1180)),
            ("REACTIVE_POWER_IMPORT", Data::DoubleLong(120)),
            ("APPARENT_POWER_IMPORT", Data::DoubleLongUnsigned(1200)),
            ("CURRENT_TOTAL", Data::DoubleLongUnsigned(5234)),
            ("VOLTAGE_TOTAL", Data::DoubleLongUnsigned(23636)),
            ("POWER_FACTOR_TOTAL", Data::DoubleLong(987)),
            ("FREQUENCY", Data::DoubleLongUnsigned(5004)),
            ("TOTAL_ENERGY_ABSOLUTE", Data::DoubleLongUnsigned(123_456)),
            ("CURRENT_NEUTRAL", Data::DoubleLongUnsigned(12)),
            ("CURRENT_TARIFF", Data::Unsigned(1)),
        ];
        for (key, value) in raw {
            if let Some(def) = registry.lookup(key) {
                let scaler_unit = def
                    .has_scaler_unit()
                    .then(|| (def.default_scaler.unwrap_or(0), unit_code(&def.unit).unwrap_or(255)));
                objects.insert(def.obis, Object { class_id: def.class_id, value, scaler_unit });
            }
        }
        let clock =
            CosemDateTime::from_bytes(&[0x07, 0xEA, 0x01, 0x1E, 0x05, 0x04, 0x22, 0x13, 0x00, 0x80, 0x00, 0xFF]);
        objects.insert(
            CLOCK,
            Object { class_id: 8, value: Data::OctetString(clock.to_bytes().to_vec()), scaler_unit: None },
        );
        DlmsMeter {
            id: id.to_owned(),
            logical_device_name: "YTL1020000000000".into(),
            objects: Mutex::new(objects),
            has_disconnect_control: true,
            output_state: AtomicBool::new(true),
            control_state: AtomicU8::new(1),
            conformance: Conformance::DEFAULT,
            reject_association: AtomicBool::new(false),
            association_requests: Default::default(),
            clock_set: Mutex::new(None),
            dynamic: false,
            push_clock: None,
            list_id: "LIST_V001".into(),
        }
    }

    /// How many values one push of `form` carries (without the stamp).
    pub fn push_values(&self, form: PushForm) -> usize {
        if form.is_data() { self.push_object_list().len() } else { 1 }
    }

    /// The objects a DataNotification carries, in order (the positional form's `dlms.push_objects`): the
    /// registers, by OBIS code.
    pub fn push_object_list(&self) -> Vec<(Obis, u16)> {
        let Ok(o) = self.objects.lock() else { return Vec::new() };
        let mut v: Vec<(Obis, u16)> =
            o.iter().filter(|(_, obj)| obj.scaler_unit.is_some()).map(|(k, obj)| (*k, obj.class_id)).collect();
        v.sort();
        v
    }

    /// Sets the raw value of an object.
    pub fn set(&self, obis: Obis, value: Data) {
        if let Ok(mut o) = self.objects.lock()
            && let Some(obj) = o.get_mut(&obis)
        {
            obj.value = value;
        }
    }

    /// The object at `obis` with its attribute 2 as of `tick`.
    fn value(&self, obis: &Obis, tick: u64) -> Option<Object> {
        let o = self.objects.lock().ok()?.get(obis).cloned()?;
        let value = match (&o.value, self.dynamic) {
            (v, true) if v.as_i128().is_some() && o.scaler_unit.is_some() => {
                let key = ObisRegistry::builtin().get(obis).map(|d| d.key.clone()).unwrap_or_default();
                let seed = self.id.bytes().last().unwrap_or(0);
                let varied = crate::values::vary_dlms(&key, v.as_i128().unwrap_or(0) as i64, tick, seed);
                match v {
                    Data::DoubleLong(_) => Data::DoubleLong(varied as i32),
                    _ => Data::DoubleLongUnsigned(varied.max(0) as u32),
                }
            }
            (v, _) => v.clone(),
        };
        Some(Object { value, ..o })
    }
}

/// A simulated DLMS connection.
#[derive(Debug, Clone)]
pub struct DlmsConfig {
    /// The meter.
    pub meter: Arc<DlmsMeter>,
    /// Send a heartbeat on connect.
    pub heartbeat: bool,
    /// Repeat it this often.
    pub heartbeat_interval: Option<Duration>,
    /// Push periodically.
    pub push: Option<(Duration, PushForm)>,
    /// Reply latency.
    pub latency: ReplyLatency,
    /// Answer nothing.
    pub mute: bool,
    /// Add the send time (µs since the Unix epoch, `long64-unsigned`) to every DataNotification as object
    /// [`STAMP_OBIS`], so a subscriber can measure end-to-end latency.
    pub stamp: bool,
    /// Faults to inject (garbage on connect, slow reads; checksums do not apply to DLMS).
    pub faults: crate::Faults,
}

impl DlmsConfig {
    /// A connection to `meter` that only answers: no heartbeat, no pushes, no latency, no stamp, no faults.
    pub fn new(meter: Arc<DlmsMeter>) -> Self {
        DlmsConfig {
            meter,
            heartbeat: false,
            heartbeat_interval: None,
            push: None,
            latency: ReplyLatency::default(),
            mute: false,
            stamp: false,
            faults: crate::Faults::default(),
        }
    }
}

/// The object that carries the send time of a stamped DataNotification (manufacturer-specific range).
pub const STAMP_OBIS: Obis = Obis([0, 0, 96, 240, 0, 255]);

/// Control of a running simulated meter.
#[derive(Debug)]
pub enum Control {
    /// Send one push now.
    Push(PushForm),
    /// Send a heartbeat now.
    Heartbeat,
    /// Send raw bytes.
    SendRaw(Vec<u8>),
    /// Close (FIN).
    Close,
    /// Reset (RST).
    Reset,
}

/// A running simulated DLMS meter.
#[derive(Debug)]
pub struct DlmsSim {
    /// Counters.
    pub stats: Arc<SimStats>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl DlmsSim {
    /// Connects and serves until closed.
    pub async fn connect(gateway: SocketAddr, cfg: DlmsConfig) -> std::io::Result<Self> {
        Self::connect_from(gateway, None, cfg).await
    }

    /// Connects from a given local address.
    pub async fn connect_from(
        gateway: SocketAddr,
        local: Option<std::net::IpAddr>,
        cfg: DlmsConfig,
    ) -> std::io::Result<Self> {
        Self::connect_counted(gateway, local, cfg, Arc::new(SimStats::default())).await
    }

    /// Connects from a given local address, counting into `stats` (shared across reconnections of one meter).
    pub async fn connect_counted(
        gateway: SocketAddr,
        local: Option<std::net::IpAddr>,
        cfg: DlmsConfig,
        stats: Arc<SimStats>,
    ) -> std::io::Result<Self> {
        let stream = crate::connect(gateway, local).await?;
        Ok(Self::attach(stream, cfg, stats))
    }

    /// Connects over TLS (the gateway's TLS meter port; `tls` carries the meter's client certificate) and serves
    /// until closed. Fails when the handshake does.
    pub async fn connect_tls(
        gateway: SocketAddr,
        tls: crate::TlsClientConfig,
        server_name: &str,
        cfg: DlmsConfig,
    ) -> std::io::Result<Self> {
        let stream = crate::connect_tls(gateway, None, tls, server_name).await?;
        Ok(Self::attach(stream, cfg, Arc::new(SimStats::default())))
    }

    /// Serves an open connection until closed.
    pub fn attach<S: crate::SimStream>(stream: S, cfg: DlmsConfig, stats: Arc<SimStats>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(serve(stream, cfg, stats.clone(), rx));
        DlmsSim { stats, control: tx, task }
    }

    /// Sends a control command.
    pub async fn control(&self, c: Control) {
        let _ = self.control.send(c).await;
    }

    /// Whether the connection has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Closes and waits.
    pub async fn close(self) {
        let _ = self.control.send(Control::Close).await;
        let _ = self.task.await;
    }
}

/// The EM114070 heartbeat for `id` (12 ASCII characters; longer ids are cut, shorter padded with '0').
pub fn heartbeat(id: &str) -> Vec<u8> {
    let mut out = vec![0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x12, 0x0A, 0x02, 0x0C];
    let mut idb: Vec<u8> = id.bytes().take(12).collect();
    while idb.len() < 12 {
        idb.insert(0, b'0');
    }
    out.extend(idb);
    out.extend([0x00, 0x00, 0x00]);
    out
}

struct State {
    associated: bool,
    push_index: usize,
    tick: u64,
}

async fn serve<S: crate::SimStream>(
    mut stream: S,
    cfg: DlmsConfig,
    stats: Arc<SimStats>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 8192];
    let mut state = State { associated: false, push_index: 0, tick: 0 };
    if let Some(garbage) = cfg.faults.garbage_on_connect.as_ref() {
        if stream.write_all(garbage).await.is_err() {
            return;
        }
        stats.faults.fetch_add(1, Ordering::Relaxed);
    }
    if cfg.heartbeat {
        if stream.write_all(&heartbeat(&cfg.meter.id)).await.is_err() {
            return;
        }
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
    }
    let far = Duration::from_secs(86_400);
    let mut hb = tokio::time::interval(cfg.heartbeat_interval.unwrap_or(far));
    hb.tick().await;
    let mut push = tokio::time::interval(cfg.push.map(|(d, _)| d).unwrap_or(far));
    push.tick().await;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Close) | None => {
                    let _ = stream.shutdown().await;
                    return;
                }
                Some(Control::Reset) => {
                    let _ = stream.tcp().set_zero_linger();
                    return;
                }
                Some(Control::Push(form)) => {
                    if send_push(&mut stream, &cfg, &mut state, form, &stats).await.is_err() {
                        return;
                    }
                }
                Some(Control::Heartbeat) => {
                    if stream.write_all(&heartbeat(&cfg.meter.id)).await.is_err() {
                        return;
                    }
                    stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                Some(Control::SendRaw(b)) => {
                    if stream.write_all(&b).await.is_err() {
                        return;
                    }
                }
            },
            _ = hb.tick(), if cfg.heartbeat_interval.is_some() => {
                if stream.write_all(&heartbeat(&cfg.meter.id)).await.is_err() {
                    return;
                }
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            _ = push.tick(), if cfg.push.is_some() => {
                let form = cfg.push.map(|(_, f)| f).unwrap_or(PushForm::EventStandard);
                if send_push(&mut stream, &cfg, &mut state, form, &stats).await.is_err() {
                    return;
                }
            }
            n = crate::read_slowly(&mut stream, &mut buf, cfg.faults.slow_read) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                framer.push(buf.get(..n).unwrap_or_default());
                let mut requests = Vec::new();
                while let Some(ev) = framer.next_event() {
                    if let FramerEvent::Packet(p) = ev {
                        requests.push(p);
                    }
                }
                for p in requests {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    if cfg.mute {
                        continue;
                    }
                    state.tick += 1;
                    let Some(reply) = answer(&cfg, &mut state, &p.payload, &stats) else { continue };
                    let delay = cfg.latency.sample();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let bytes = match p.header {
                        // Answer from the wPort it was sent to, to the wPort it came from.
                        Some(h) => wrapper::wrap(h.destination, h.source, &reply).unwrap_or_default(),
                        None => reply,
                    };
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    stats.replies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn send_push<S: crate::SimStream>(
    stream: &mut S,
    cfg: &DlmsConfig,
    state: &mut State,
    form: PushForm,
    stats: &SimStats,
) -> std::io::Result<()> {
    state.tick += 1;
    let objects = cfg.meter.push_object_list();
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let capture_time = cfg.meter.push_clock.map(|c| c.at(now_ms));
    let apdu = match form {
        PushForm::EventStandard | PushForm::EventEm114070 => {
            let Some((obis, class_id)) = objects.get(state.push_index % objects.len().max(1)).copied() else {
                return Ok(());
            };
            state.push_index += 1;
            let Some(Object { value, .. }) = cfg.meter.value(&obis, state.tick) else { return Ok(()) };
            Apdu::EventNotification(EventNotification {
                // The EM114070 layout has no place for a time.
                time: capture_time.filter(|_| form == PushForm::EventStandard),
                attribute: AttributeDescriptor::new(class_id, obis, 2),
                value,
                form: if form == PushForm::EventStandard { EventForm::Standard } else { EventForm::Em114070 },
            })
        }
        data_form => {
            let mut entries: Vec<PushEntry> = objects
                .iter()
                .filter_map(|(obis, class_id)| {
                    let o = cfg.meter.value(obis, state.tick)?;
                    Some(PushEntry { obis: *obis, class_id: *class_id, value: o.value, scaler_unit: o.scaler_unit })
                })
                .collect();
            if cfg.stamp {
                let micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                entries.push(PushEntry {
                    obis: STAMP_OBIS,
                    class_id: 1,
                    value: Data::Long64Unsigned(micros),
                    scaler_unit: None,
                });
            }
            let Some(body) = encode_push_body(data_form, &entries, &cfg.meter.list_id) else { return Ok(()) };
            Apdu::DataNotification(DataNotification {
                long_invoke_id: state.tick as u32,
                date_time: capture_time,
                body,
            })
        }
    };
    let bytes = wrapper::wrap(0x0001, 0x0001, &apdu.encode()).unwrap_or_default();
    stream.write_all(&bytes).await?;
    stats.pushes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn read_attribute(
    meter: &DlmsMeter,
    a: &AttributeDescriptor,
    associated: bool,
    tick: u64,
) -> Result<Data, DataAccessResult> {
    if !associated {
        return Err(DataAccessResult(3));
    }
    let undefined = Err(DataAccessResult::OBJECT_UNDEFINED);
    if a.obis == DISCONNECT_CONTROL {
        if !meter.has_disconnect_control || a.class_id != 70 {
            return undefined;
        }
        return match a.attribute {
            2 => Ok(Data::Boolean(meter.output_state.load(Ordering::Relaxed))),
            3 => Ok(Data::Enum(meter.control_state.load(Ordering::Relaxed))),
            4 => Ok(Data::Enum(0)),
            _ => undefined,
        };
    }
    if a.obis == LOGICAL_DEVICE_NAME && a.class_id == 1 && a.attribute == 2 {
        return Ok(Data::OctetString(meter.logical_device_name.as_bytes().to_vec()));
    }
    if a.obis == SERIAL_NUMBER && a.class_id == 1 && a.attribute == 2 {
        return Ok(Data::OctetString(meter.id.as_bytes().to_vec()));
    }
    // The real meter answers object-undefined when asked with the wrong class.
    let Some(o) = meter.value(&a.obis, tick) else { return undefined };
    if o.class_id != a.class_id {
        return undefined;
    }
    match (a.attribute, o.scaler_unit) {
        (2, _) => Ok(o.value),
        (3, Some((s, u))) => Ok(Data::Structure(vec![Data::Integer(s), Data::Enum(u)])),
        _ => undefined,
    }
}

fn counted(r: Result<Data, DataAccessResult>, stats: &SimStats) -> Result<Data, DataAccessResult> {
    if r == Err(DataAccessResult::OBJECT_UNDEFINED) {
        stats.undefined.fetch_add(1, Ordering::Relaxed);
    }
    r
}

fn answer(cfg: &DlmsConfig, state: &mut State, payload: &[u8], stats: &SimStats) -> Option<Vec<u8>> {
    let meter = &cfg.meter;
    let apdu = Apdu::parse_prefix(payload).ok()?.0;
    let reply = match apdu {
        Apdu::Aarq(_) => {
            meter.association_requests.fetch_add(1, Ordering::Relaxed);
            if meter.reject_association.load(Ordering::Relaxed) {
                state.associated = false;
                // authentication-failure
                Apdu::Aare(Aare::rejected(13))
            } else {
                state.associated = true;
                stats.associations.fetch_add(1, Ordering::Relaxed);
                Apdu::Aare(Aare::accepted(meter.conformance, 500))
            }
        }
        Apdu::Rlrq(_) => {
            state.associated = false;
            stats.releases.fetch_add(1, Ordering::Relaxed);
            Apdu::Rlre(Release { reason: Some(0) })
        }
        Apdu::GetRequest(GetRequest::Normal { iip, attribute, .. }) => Apdu::GetResponse(GetResponse::Normal {
            iip,
            result: counted(read_attribute(meter, &attribute, state.associated, state.tick), stats),
        }),
        Apdu::GetRequest(GetRequest::WithList { iip, attributes }) => Apdu::GetResponse(GetResponse::WithList {
            iip,
            results: attributes
                .iter()
                .map(|(a, _)| counted(read_attribute(meter, a, state.associated, state.tick), stats))
                .collect(),
        }),
        Apdu::GetRequest(GetRequest::Next { iip, .. }) => {
            Apdu::GetResponse(GetResponse::Normal { iip, result: Err(DataAccessResult(16)) })
        }
        Apdu::SetRequest(SetRequest::Normal { iip, attribute, value, .. }) => {
            let result = if !state.associated {
                DataAccessResult(3)
            } else if attribute.obis == CLOCK && attribute.class_id == 8 && attribute.attribute == 2 {
                let t = value.as_bytes().and_then(CosemDateTime::from_slice);
                if let Ok(mut c) = meter.clock_set.lock() {
                    *c = t;
                }
                stats.time_syncs.fetch_add(1, Ordering::Relaxed);
                if t.is_some() { DataAccessResult::SUCCESS } else { DataAccessResult(12) }
            } else {
                DataAccessResult::OBJECT_UNDEFINED
            };
            Apdu::SetResponse(SetResponse::Normal { iip, result })
        }
        Apdu::ActionRequest(ActionRequest { iip, method, .. }) => {
            let result = if !state.associated {
                3
            } else if method.obis != DISCONNECT_CONTROL || method.class_id != 70 || !meter.has_disconnect_control {
                4
            } else {
                match method.method {
                    1 => {
                        meter.output_state.store(false, Ordering::Relaxed);
                        meter.control_state.store(0, Ordering::Relaxed);
                        stats.relay_operations.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                    2 => {
                        meter.output_state.store(true, Ordering::Relaxed);
                        meter.control_state.store(1, Ordering::Relaxed);
                        stats.relay_operations.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                    _ => 4,
                }
            };
            Apdu::ActionResponse(ActionResponse {
                iip: InvokeIdAndPriority(iip.0),
                result,
                return_parameters: None,
                presence_byte_missing: false,
            })
        }
        _ => return None,
    };
    Some(reply.encode())
}
