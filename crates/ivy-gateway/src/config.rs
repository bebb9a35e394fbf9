//! Configuration (SPEC 9): built-in defaults < `ivy-gateway.toml` (or `--config`) < `.env` < environment.
//!
//! The TOML file mirrors [`Config`] section by section; unknown keys are errors (a typo must not silently fall
//! back to a default). Environment variables use the original product's names (`TCP_PORT`, `POLLING_INTERVAL`,
//! `MQTT_USERS`, ...) and mean what they say; see [`ENV_VARS`] for the full list. Hex values such as `0x0010` parse
//! as hex. Every problem names the key it comes from.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

/// A non-zero default size (a zero literal would be a bug in this file; it becomes 1).
const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// A value the configuration writes as text and the gateway uses parsed: parsed once, when the configuration is
/// read. The text is kept for `check-config` (masked where secret); a text that does not parse is reported by
/// [`Config::validate`] under its key, so a configuration that loaded holds only parsed values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String", bound = "T: ConfigText")]
pub struct Parsed<T: ConfigText> {
    text: String,
    parsed: Result<T, String>,
}

/// A type written as text in the configuration.
pub trait ConfigText: Clone + Sized {
    /// Parses the text, or says what it must look like.
    fn from_text(text: &str) -> Result<Self, String>;
}

impl<T: ConfigText> Parsed<T> {
    /// The parsed value (`None` only in a configuration that failed validation).
    pub fn get(&self) -> Option<&T> {
        self.parsed.as_ref().ok()
    }

    /// Why the text does not parse.
    pub fn problem(&self) -> Option<&str> {
        self.parsed.as_ref().err().map(String::as_str)
    }

    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn mask(&mut self) {
        self.text = "*".repeat(self.text.len().min(8));
    }
}

impl<T: ConfigText> From<String> for Parsed<T> {
    fn from(text: String) -> Self {
        let parsed = T::from_text(&text);
        Parsed { text, parsed }
    }
}

impl<T: ConfigText> From<&str> for Parsed<T> {
    fn from(text: &str) -> Self {
        Parsed::from(text.to_owned())
    }
}

impl<T: ConfigText> From<Parsed<T>> for String {
    fn from(p: Parsed<T>) -> String {
        p.text
    }
}

// The text, not the value: an AES key must not reach a log through the parsed bytes either.
impl<T: ConfigText> std::fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// Bytes written as hex (spaces allowed), e.g. an acknowledgement payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl ConfigText for HexBytes {
    fn from_text(text: &str) -> Result<Self, String> {
        hex::decode(text.replace(' ', "")).map(HexBytes).map_err(|_| "must be hex".to_owned())
    }
}

/// An AES-128 key written as 32 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey(pub [u8; 16]);

impl ConfigText for AesKey {
    fn from_text(text: &str) -> Result<Self, String> {
        let bad = || "must be 32 hex digits (AES-128)".to_owned();
        let bytes = hex::decode(text).map_err(|_| bad())?;
        bytes.try_into().map(AesKey).map_err(|_| bad())
    }
}

/// An IANA time zone name (`Europe/Berlin`), looked up in the compiled-in database.
impl ConfigText for ivy_protocol::dlms::MeterZone {
    fn from_text(text: &str) -> Result<Self, String> {
        ivy_protocol::dlms::MeterZone::iana(text).map_err(|e| e.to_string())
    }
}

impl ConfigText for ivy_protocol::dlms::Obis {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| "must be an OBIS code like 1-0:12.7.0.255".to_owned())
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The TOML path (`polling.interval_secs`) or environment variable (`POLLING_INTERVAL`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { key: key.into(), problem: problem.into() }
    }
}

/// Every configuration problem found at once, so an operator fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Gateway identity, data directory, logs, stats.
    pub gateway: GatewayConfig,
    /// The meter-facing TCP listener and its limits.
    pub meters: MetersConfig,
    /// DL/T 645 behaviour.
    pub dlt645: Dlt645Config,
    /// DLMS/COSEM behaviour.
    pub dlms: DlmsConfig,
    /// Polling schedule and register groups.
    pub polling: PollingConfig,
    /// Commands from MQTT/HTTP.
    pub commands: CommandsConfig,
    /// Alarm rules.
    pub alarms: AlarmsConfig,
    /// MQTT broker and topics.
    pub mqtt: MqttConfig,
    /// HTTP API and dashboard.
    pub http: HttpConfig,
    /// The embedded SQLite store (SPEC 8).
    pub store: StoreConfig,
    /// The durable outbox of messages bound for the upstream broker.
    pub outbox: OutboxConfig,
    /// Login throttling shared by MQTT and HTTP.
    pub auth: AuthConfig,
}

/// `[auth]`: throttling of failed logins (MQTT CONNECT, HTTP login and Basic), see `docs/SECURITY.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Failures of one user from one source address before waits start.
    pub failures_before_delay: u32,
    /// The first wait after that, in ms; doubled at each further failure.
    pub failure_delay_ms: u64,
    /// The longest wait, in ms.
    pub failure_delay_max_ms: u64,
    /// Failed logins a minute from one source address (IPv6: one /64), all user names together; 0 = no limit.
    pub source_failures_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failures_before_delay: 3,
            failure_delay_ms: 1000,
            failure_delay_max_ms: 60_000,
            source_failures_per_minute: 30,
        }
    }
}

impl AuthConfig {
    /// The throttle these settings describe.
    pub fn guard(&self) -> crate::login_guard::GuardConfig {
        crate::login_guard::GuardConfig {
            free_failures: self.failures_before_delay,
            delay: std::time::Duration::from_millis(self.failure_delay_ms),
            max_delay: std::time::Duration::from_millis(self.failure_delay_max_ms.max(self.failure_delay_ms)),
            source_failures_per_minute: self.source_failures_per_minute,
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name published in the gateway status.
    pub name: String,
    /// When set, gateway topics become `{prefix}/gateways/{gateway_id}/...` (several gateways on one broker).
    pub gateway_id: Option<String>,
    /// Where users, the database and other state live.
    pub data_dir: PathBuf,
    /// Seconds between `gateway/stats` messages.
    pub stats_interval_secs: u64,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Seconds a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            name: "IVY Gateway".into(),
            gateway_id: None,
            data_dir: PathBuf::from("./data"),
            stats_interval_secs: 30,
            log_format: LogFormat::Text,
            shutdown_timeout_secs: 10,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[meters]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetersConfig {
    /// Listen address for meters.
    pub host: IpAddr,
    /// Listen port for meters (`TCP_PORT`).
    pub port: u16,
    /// Whether the plaintext meter port (`port`) listens (`TCP_PLAINTEXT`). With TLS on, turning it off is what
    /// makes every meter id provable (docs/SECURITY-identity.md); both on is for migrating a fleet.
    pub plaintext: bool,
    /// Port of the TLS meter listener (`TCP_TLS_PORT`); it runs when `tls_cert`, `tls_key` and `tls_client_ca` are
    /// set. Meters must present a client certificate issued by `tls_client_ca` that names their meter id.
    pub tls_port: u16,
    /// PEM certificate chain (leaf first) the TLS meter port presents (`TCP_TLS_CERT`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (`TCP_TLS_KEY`); keep it mode 0600.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that meter client certificates must chain to (`TCP_TLS_CLIENT_CA`).
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds a TLS meter connection has to complete its handshake; a timeout or a failed handshake is a strike
    /// for the rate limit, like any connection that never identifies.
    pub tls_handshake_timeout_secs: u64,
    /// Maximum concurrent meter connections.
    pub max_connections: NonZeroUsize,
    /// Maximum concurrent connections from one IP (DTUs behind carrier NAT share IPs).
    pub max_connections_per_ip: NonZeroUsize,
    /// Whether connection attempts per IP are rate limited.
    pub rate_limiting_enabled: bool,
    /// Connection attempts allowed per IP per window.
    pub max_connection_attempts: NonZeroU32,
    /// The rate-limit window in milliseconds.
    pub rate_limit_window_ms: u64,
    /// How long an IP that exceeded the rate stays blocked, in milliseconds.
    pub rate_limit_block_duration_ms: u64,
    /// Seconds without bytes *from* the meter before the connection is closed.
    pub idle_timeout_secs: u64,
    /// Seconds between idle sweeps.
    pub sweep_interval_secs: u64,
    /// TCP keepalive idle time in seconds (0 = off).
    pub tcp_keepalive_secs: u64,
    /// Per-connection receive buffer cap in bytes; a peer that exceeds it is disconnected.
    pub buffer_cap: NonZeroUsize,
    /// Seconds to decide the protocol before the connection is closed.
    pub detection_timeout_secs: u64,
    /// Seconds of silence after which a DL/T 645 connection is probed with read-address, or a DLMS one asked for
    /// its logical device name.
    pub identify_after_secs: u64,
    /// What to do with a registration packet carrying an all-zero id.
    pub zero_address_action: ZeroAddressAction,
    /// Send this acknowledgement (hex) after each EM114070 heartbeat (`HEARTBEAT_ACK_PAYLOAD`).
    pub heartbeat_ack: Option<Parsed<HexBytes>>,
    /// Extra registration rules, tried after the built-in EM114070 heartbeat.
    pub registration_rules: Vec<RegistrationRuleConfig>,
    /// Meters keep local time: minutes east of UTC used when setting their clocks and relay deadlines, and to
    /// read date-times without a deviation when no `timezone` is set.
    pub clock_utc_offset_minutes: i32,
    /// Who keeps a meter id that is online when another connection claims it (docs/SECURITY-identity.md).
    pub duplicate_identity: DuplicateIdentity,
    /// How long the connection holding a contested id has to show it is alive (answer the probe or send any
    /// bytes), in milliseconds.
    pub identity_probe_timeout_ms: u64,
    /// Seconds after a contest of a meter id during which no secret (DL/T 645 password and operator code, relay
    /// AES key, DLMS LLS password) is sent for that id; commands that need one fail with `identity_contested`.
    /// 0 turns the rule off.
    pub secrets_quiet_secs: u64,
    /// Source networks (CIDR, or single addresses) meters may connect from; empty allows any.
    pub allowed_sources: Vec<Parsed<SourceNet>>,
    /// Per meter id, the only source networks it may identify from (narrows `allowed_sources` for that id).
    pub allowed_sources_by_meter: BTreeMap<String, Vec<Parsed<SourceNet>>>,
    /// Meter ids one connection may hold (a DTU has a known number of meters behind it).
    pub max_ids_per_connection: NonZeroUsize,
    /// Meter ids new to the registry accepted per source IP per minute (0 = unlimited).
    pub max_new_ids_per_ip_per_minute: u32,
    /// Unidentified connections an IP that misbehaved may hold at once; a newer one closes the oldest.
    pub max_unidentified_per_penalised_ip: NonZeroUsize,
    /// The IANA time zone meters keep their clocks in (`Europe/Berlin`); date-times without a deviation are read in
    /// it, DST included. Takes precedence over `clock_utc_offset_minutes`.
    pub timezone: Option<Parsed<ivy_protocol::dlms::MeterZone>>,
    /// A capture time further than this from the gateway clock is kept but flagged (`tsSkewed`) and counted.
    pub capture_time_tolerance_secs: u64,
    /// Per-meter settings (`timezone`, `clock_utc_offset_minutes`), by meter id.
    pub meter_overrides: BTreeMap<String, MeterOverride>,
}

impl MetersConfig {
    /// The TLS meter port's files (certificate, key, client CA) when it is on.
    pub fn tls(&self) -> Option<MeterTlsFiles<'_>> {
        Some(MeterTlsFiles {
            cert: self.tls_cert.as_deref()?,
            key: self.tls_key.as_deref()?,
            client_ca: self.tls_client_ca.as_deref()?,
        })
    }
}

/// The files of the TLS meter port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterTlsFiles<'a> {
    /// PEM certificate chain presented to meters.
    pub cert: &'a std::path::Path,
    /// Its PEM private key.
    pub key: &'a std::path::Path,
    /// PEM CA certificate(s) meter certificates must chain to.
    pub client_ca: &'a std::path::Path,
}

/// One `[meters.meter_overrides.<id>]` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterOverride {
    /// The meter's IANA time zone.
    pub timezone: Option<Parsed<ivy_protocol::dlms::MeterZone>>,
    /// The meter's fixed offset, minutes east of UTC (used when it has no `timezone`).
    pub clock_utc_offset_minutes: Option<i32>,
}

impl Default for MetersConfig {
    fn default() -> Self {
        MetersConfig {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8899,
            plaintext: true,
            tls_port: 8898,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout_secs: 10,
            max_connections: nz(10_000),
            max_connections_per_ip: nz(100),
            rate_limiting_enabled: true,
            max_connection_attempts: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            rate_limit_window_ms: 60_000,
            rate_limit_block_duration_ms: 300_000,
            idle_timeout_secs: 120,
            sweep_interval_secs: 30,
            tcp_keepalive_secs: 60,
            buffer_cap: nz(64 * 1024),
            detection_timeout_secs: 30,
            identify_after_secs: 10,
            zero_address_action: ZeroAddressAction::Accept,
            heartbeat_ack: None,
            registration_rules: Vec::new(),
            clock_utc_offset_minutes: 0,
            duplicate_identity: DuplicateIdentity::Probe,
            identity_probe_timeout_ms: 5000,
            secrets_quiet_secs: 300,
            allowed_sources: Vec::new(),
            allowed_sources_by_meter: BTreeMap::new(),
            max_ids_per_connection: nz(32),
            max_new_ids_per_ip_per_minute: 1200,
            max_unidentified_per_penalised_ip: nz(4),
            timezone: None,
            capture_time_tolerance_secs: 86_400,
            meter_overrides: BTreeMap::new(),
        }
    }
}

/// What happens when a meter id that is online on one connection is claimed by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateIdentity {
    /// Probe the holding connection: it answers → the newcomer is refused; it is silent → the newcomer wins.
    Probe,
    /// The newcomer always wins (the original gateway's behaviour: anyone can take an id over).
    NewestWins,
    /// The holder always keeps the id while its connection is open.
    OldestWins,
}

impl DuplicateIdentity {
    /// The configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            DuplicateIdentity::Probe => "probe",
            DuplicateIdentity::NewestWins => "newest_wins",
            DuplicateIdentity::OldestWins => "oldest_wins",
        }
    }
}

/// A source network: `10.0.0.0/8`, `2001:db8::/32`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNet(pub ipnet::IpNet);

impl ConfigText for SourceNet {
    fn from_text(text: &str) -> Result<Self, String> {
        let s = text.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(SourceNet)
            .map_err(|_| format!("'{s}' is not a CIDR network or an IP address"))
    }
}

impl SourceNet {
    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Policy for all-zero registration ids (SPEC 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroAddressAction {
    /// Keep `000000000000`.
    Accept,
    /// Use `auto_<ip>_<port>`.
    UseIp,
}

/// One `[[meters.registration_rules]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRuleConfig {
    /// A name for logs.
    pub name: String,
    /// The packet prefix, hex.
    pub prefix: String,
    /// Offset of the id from the start of the packet.
    pub id_offset: usize,
    /// Length of the id in bytes.
    pub id_length: usize,
    /// Whole packet length (default: id offset + id length).
    pub packet_length: Option<usize>,
    /// `ascii`, `bcd` or `hex`.
    #[serde(default = "default_id_encoding")]
    pub encoding: String,
    /// Acknowledgement to send back, hex.
    pub ack: Option<String>,
}

fn default_id_encoding() -> String {
    "ascii".into()
}

/// `[dlt645]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dlt645Config {
    /// Reply timeout per request, milliseconds.
    pub timeout_ms: u64,
    /// Retries after a timeout.
    pub retries: u32,
    /// Password level for write and relay control (PA).
    pub password_level: u8,
    /// Password, 6 digits (P0..P2 as BCD).
    pub password: String,
    /// Operator code, 8 digits (C0..C3 as BCD).
    pub operator_code: String,
    /// Minutes a relay command stays valid (N3..N8 deadline).
    pub relay_validity_minutes: u32,
    /// AES-128 key (32 hex digits) for meters that expect an encrypted relay block; off when unset.
    pub relay_aes_key: Option<Parsed<AesKey>>,
    /// Encrypt relay blocks for every meter (otherwise only the meters listed in `meter_overrides`).
    pub relay_aes_enabled: bool,
    /// Per-meter overrides keyed by meter id.
    pub meter_overrides: BTreeMap<String, Dlt645MeterOverride>,
    /// Optional TOML file with extra register definitions.
    pub register_file: Option<PathBuf>,
    /// `FE` wake-up bytes sent before each request (the original sent none; RS-485 DTUs may want 4).
    pub wakeup_preamble: usize,
}

impl Default for Dlt645Config {
    fn default() -> Self {
        Dlt645Config {
            timeout_ms: 5_000,
            retries: 2,
            password_level: 2,
            password: "000000".into(),
            operator_code: "00000000".into(),
            relay_validity_minutes: 10,
            relay_aes_key: None,
            relay_aes_enabled: false,
            meter_overrides: BTreeMap::new(),
            register_file: None,
            wakeup_preamble: 0,
        }
    }
}

/// Per-meter DL/T 645 settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dlt645MeterOverride {
    /// Password level.
    pub password_level: Option<u8>,
    /// Password, 6 digits.
    pub password: Option<String>,
    /// Operator code, 8 digits.
    pub operator_code: Option<String>,
    /// AES-encrypt the relay block for this meter.
    pub relay_aes: Option<bool>,
    /// AES key for this meter, 32 hex digits.
    pub relay_aes_key: Option<Parsed<AesKey>>,
}

/// `[dlms]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlmsConfig {
    /// Only listen to what meters push; no active polling (the original's default).
    pub passive_only: bool,
    /// Our wrapper source wPort (`DLMS_CLIENT_ADDRESS`; the standard public client is 0x0010).
    pub client_wport: u16,
    /// The meter's wrapper destination wPort (`DLMS_IVY_DESTINATION`).
    pub server_wport: u16,
    /// Maximum wrapper payload accepted.
    pub max_payload: NonZeroUsize,
    /// Milliseconds to wait for an AARE.
    pub association_timeout_ms: u64,
    /// Milliseconds to wait for each response.
    pub response_timeout_ms: u64,
    /// Keep the association open between polls when the meter allows it.
    pub keep_association: bool,
    /// Proposed conformance block, hex (24 bits).
    pub conformance: u32,
    /// Client max receive PDU size.
    pub max_pdu_size: u16,
    /// Low-level-security password; none = lowest-level security.
    pub lls_password: Option<String>,
    /// Set the high-priority bit of invoke-id-and-priority.
    pub priority_high: bool,
    /// Set the confirmed service-class bit.
    pub service_class_confirmed: bool,
    /// Send `integer(0)` with disconnect-control methods (standard), or no parameter (`false`).
    pub disconnect_integer_parameter: bool,
    /// Optional TOML file with extra OBIS definitions.
    pub obis_file: Option<PathBuf>,
    /// OBIS codes of the values of a positional DataNotification body, in order (self-describing bodies of
    /// `(OBIS, value)` pairs need none).
    pub push_objects: Vec<Parsed<ivy_protocol::dlms::Obis>>,
    /// Scalers for meters that push values without them (and have none read or registered), by meter id pattern.
    pub scaler_tables: Vec<ScalerTable>,
    /// First wait after a permanent association rejection before the next AARQ, in milliseconds; doubled after each
    /// further rejection.
    pub rejection_backoff_initial_ms: u64,
    /// Longest wait between AARQs to a meter that keeps rejecting the association, in milliseconds.
    pub rejection_backoff_max_ms: u64,
}

/// One `[[dlms.scaler_tables]]` entry: the scalers of one meter model (or one meter).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerTable {
    /// Meter ids it applies to: exact ids, or prefixes ending in `*` (`"AIDON*"`); the first matching table wins.
    pub meters: Vec<String>,
    /// OBIS code → power of ten applied to raw values (`"1-0:32.7.0.255" = -1`).
    pub scalers: BTreeMap<String, i8>,
}

impl ScalerTable {
    /// Whether the table applies to `meter`.
    pub fn applies_to(&self, meter: &str) -> bool {
        self.meters.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => meter.starts_with(prefix),
            None => p == meter,
        })
    }
}

impl Default for DlmsConfig {
    fn default() -> Self {
        DlmsConfig {
            passive_only: true,
            client_wport: 0x0001,
            server_wport: 0x0001,
            max_payload: nz(4096),
            association_timeout_ms: 5_000,
            response_timeout_ms: 5_000,
            keep_association: false,
            conformance: 0x00_1E1D,
            max_pdu_size: 0xFFFF,
            lls_password: None,
            priority_high: false,
            service_class_confirmed: false,
            disconnect_integer_parameter: true,
            obis_file: None,
            push_objects: Vec::new(),
            scaler_tables: Vec::new(),
            rejection_backoff_initial_ms: 60_000,
            rejection_backoff_max_ms: 3_600_000,
        }
    }
}

/// `[polling]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollingConfig {
    /// Poll at all.
    pub enabled: bool,
    /// Milliseconds between polls of one meter (`POLLING_INTERVAL`, default 60 s).
    pub interval_ms: u64,
    /// Group polled by default (`POLLING_REGISTER_GROUP`).
    pub group: String,
    /// Maximum meters polled at the same time.
    pub max_concurrent: NonZeroUsize,
    /// Random jitter of the first and later polls, percent of the interval.
    pub jitter_percent: u8,
    /// Delay before the first poll after identification, milliseconds (jitter is added).
    pub first_poll_delay_ms: u64,
    /// Start cycles at multiples of the interval on the wall clock (readings of all meters at :00, :15, ...) instead
    /// of relative to each meter's connection with jitter.
    pub align: bool,
    /// DL/T 645 groups: name → register keys or DIs. Merged over the built-in groups.
    pub dlt645_groups: BTreeMap<String, Vec<String>>,
    /// DLMS groups: name → OBIS codes or keys. Merged over the built-in groups.
    pub dlms_groups: BTreeMap<String, Vec<String>>,
    /// Per-meter overrides keyed by meter id.
    pub meter_overrides: BTreeMap<String, PollOverride>,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            enabled: true,
            interval_ms: 60_000,
            group: "all".into(),
            max_concurrent: nz(1000),
            jitter_percent: 10,
            first_poll_delay_ms: 1_000,
            align: false,
            dlt645_groups: BTreeMap::new(),
            dlms_groups: BTreeMap::new(),
            meter_overrides: BTreeMap::new(),
        }
    }
}

/// Per-meter polling settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollOverride {
    /// Poll this meter at all.
    pub enabled: Option<bool>,
    /// Interval in milliseconds.
    pub interval_ms: Option<u64>,
    /// Group name.
    pub group: Option<String>,
    /// An explicit list of keys/DIs/OBIS codes (wins over `group`).
    pub registers: Option<Vec<String>>,
}

/// `[commands]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Deadline of one command (queue wait + exchange), milliseconds.
    pub timeout_ms: u64,
    /// Requests queued per meter connection before `busy` is answered.
    pub queue_depth: NonZeroUsize,
    /// Commands executing at once across the gateway.
    pub max_concurrent: NonZeroUsize,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig { timeout_ms: 15_000, queue_depth: nz(32), max_concurrent: nz(1_000) }
    }
}

/// `[alarms]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Evaluate alarms at all.
    pub enabled: bool,
    /// Overvoltage threshold, V.
    pub overvoltage_v: f64,
    /// Undervoltage threshold, V (only when voltage > 0; 0 V is `voltage_loss`).
    pub undervoltage_v: f64,
    /// Overcurrent threshold, A.
    pub overcurrent_a: f64,
    /// Overload threshold (active power), kW.
    pub overload_kw: f64,
    /// Low power factor threshold (only when |P| > `low_power_factor_min_power_kw`).
    pub low_power_factor: f64,
    /// Minimum |active power| for the power-factor rule, kW.
    pub low_power_factor_min_power_kw: f64,
    /// Hysteresis, percent of the threshold.
    pub hysteresis_percent: f64,
    /// Seconds a condition must hold before it raises (0 = next reading).
    pub min_duration_secs: u64,
    /// Seconds offline before `communication_lost`.
    pub offline_grace_secs: u64,
    /// Per-meter overrides keyed by meter id.
    pub meter_overrides: BTreeMap<String, AlarmOverride>,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            enabled: true,
            overvoltage_v: 253.0,
            undervoltage_v: 207.0,
            overcurrent_a: 60.0,
            overload_kw: 10.0,
            low_power_factor: 0.5,
            low_power_factor_min_power_kw: 0.1,
            hysteresis_percent: 2.0,
            min_duration_secs: 0,
            offline_grace_secs: 300,
            meter_overrides: BTreeMap::new(),
        }
    }
}

/// Per-meter alarm thresholds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmOverride {
    /// Overvoltage threshold, V.
    pub overvoltage_v: Option<f64>,
    /// Undervoltage threshold, V.
    pub undervoltage_v: Option<f64>,
    /// Overcurrent threshold, A.
    pub overcurrent_a: Option<f64>,
    /// Overload threshold, kW.
    pub overload_kw: Option<f64>,
    /// Low power factor threshold.
    pub low_power_factor: Option<f64>,
    /// Hysteresis percent.
    pub hysteresis_percent: Option<f64>,
    /// Minimum duration seconds.
    pub min_duration_secs: Option<u64>,
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Topic prefix (`MQTT_TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Listen address of the embedded broker.
    pub host: IpAddr,
    /// MQTT TCP port (`MQTT_PORT`).
    pub port: u16,
    /// MQTT over WebSocket port (`MQTT_WS_PORT`; 0 = off).
    pub ws_port: u16,
    /// Require user name and password (`MQTT_AUTH_ENABLED`).
    pub auth_enabled: bool,
    /// Plain users in the original's format `u:p[:role],...` (`MQTT_USERS`; deprecated, use the users file).
    pub users: Option<String>,
    /// Maximum MQTT client connections.
    pub max_connections: NonZeroUsize,
    /// Capacity of the in-process publish queue.
    pub publish_queue: NonZeroUsize,
    /// TLS listener port (0 = off).
    pub tls_port: u16,
    /// WebSocket-over-TLS port (0 = off).
    pub wss_port: u16,
    /// PEM certificate chain for the TLS listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    pub tls_key: Option<PathBuf>,
    /// Messages queued at most for one client session that does not read (then the oldest are dropped and
    /// counted per client).
    pub session_queue_messages: NonZeroUsize,
    /// Largest MQTT packet a client may send, in bytes (with `session_queue_messages` it bounds the bytes a
    /// session can hold).
    pub max_packet_bytes: u32,
    /// MQTT connections open at once per user name (0 = no limit).
    pub max_sessions_per_user: usize,
    /// Seconds a new connection has to complete CONNECT.
    pub handshake_timeout_secs: u64,
    /// Run the embedded broker (`MQTT_EMBEDDED`); off, the gateway publishes upstream only.
    pub embedded: bool,
    /// The upstream broker or cluster (SPEC 4.1), off unless `url` is set.
    pub upstream: UpstreamConfig,
}

/// `[mqtt.upstream]`: the gateway as a client of an external broker (Mosquitto, EMQX, HiveMQ), fed by the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (`MQTT_UPSTREAM_URL`); none = upstream off.
    pub url: Option<String>,
    /// User name (`MQTT_UPSTREAM_USERNAME`).
    pub username: Option<String>,
    /// Password (`MQTT_UPSTREAM_PASSWORD`).
    pub password: Option<String>,
    /// Client id (`MQTT_UPSTREAM_CLIENT_ID`); default `ivy-gateway-{gateway_id}`, else `ivy-gateway-{host name}`.
    /// Keep it stable: the broker keeps the session (command subscriptions, queued requests) under it.
    pub client_id: Option<String>,
    /// PEM CA certificate(s) the broker's certificate must chain to (`MQTT_UPSTREAM_CA`); default: the system's.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (`MQTT_UPSTREAM_CERT`).
    pub cert: Option<PathBuf>,
    /// PEM client private key (`MQTT_UPSTREAM_KEY`).
    pub key: Option<PathBuf>,
    /// MQTT keepalive in seconds (`MQTT_UPSTREAM_KEEPALIVE`).
    pub keepalive_secs: u64,
    /// `"3.1.1"` or `"5"` (`MQTT_UPSTREAM_PROTOCOL`).
    pub protocol: String,
    /// First reconnect delay in ms; doubled per failed attempt up to `reconnect_max_ms`, with jitter.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in ms.
    pub reconnect_max_ms: u64,
    /// Messages sent and not yet acknowledged at most (the QoS 1 window).
    pub inflight: u16,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: None,
            username: None,
            password: None,
            client_id: None,
            ca: None,
            cert: None,
            key: None,
            keepalive_secs: 30,
            protocol: "3.1.1".into(),
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            inflight: 256,
        }
    }
}

/// Where the upstream broker is, parsed from `mqtt.upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 1883, 8883 with TLS).
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

impl UpstreamUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("'{url}' must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!("'{url}' must be mqtt[s]://host[:port], without a path or credentials"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("'{url}': unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, p),
                None if after.is_empty() => (host, ""),
                None => return Err(format!("'{url}': unexpected text after the address")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (rest, ""),
            }
        };
        if host.is_empty() {
            return Err(format!("'{url}' has no host"));
        }
        let port = if port.is_empty() {
            default_port
        } else {
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("'{url}': '{port}' is not a port"))?
        };
        Ok(UpstreamUrl { host: host.to_owned(), port, tls })
    }
}

/// `[outbox]`: bounds of the durable outbox (messages bound for the upstream broker, waiting for PUBACK).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Messages held at most (`OUTBOX_MAX_MESSAGES`); beyond it the oldest telemetry is dropped, then snapshots,
    /// then ordinary events; status and alarm events are never dropped.
    pub max_messages: u64,
    /// Bytes (topic + payload) held at most, in MiB (`OUTBOX_MAX_MB`); same policy.
    pub max_mb: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { max_messages: 2_000_000, max_mb: 512 }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            topic_prefix: "ivy/v1".into(),
            host: IpAddr::from([0, 0, 0, 0]),
            port: 1883,
            ws_port: 9001,
            auth_enabled: true,
            users: None,
            max_connections: nz(10_000),
            publish_queue: nz(65_536),
            tls_port: 0,
            wss_port: 0,
            tls_cert: None,
            tls_key: None,
            session_queue_messages: nz(1000),
            max_packet_bytes: 64 * 1024,
            max_sessions_per_user: 64,
            handshake_timeout_secs: 10,
            embedded: true,
            upstream: UpstreamConfig::default(),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Listen address (`HTTP_HOST`).
    pub host: IpAddr,
    /// Listen port (`HTTP_PORT`).
    pub port: u16,
    /// Requests per minute per IP (`HTTP_RATE_LIMIT`).
    pub rate_limit_per_minute: u32,
    /// Dashboard/API sessions end after this long without a request.
    pub session_idle_secs: u64,
    /// Numeric readings kept in memory per meter and register for history and charts (memory grows with
    /// meters × registers × points: 120 cost ~60 MB for 1000 pushing meters).
    pub history_points: usize,
    /// Origins besides the gateway's own allowed to send state-changing requests from a browser (exact
    /// `scheme://host[:port]`, e.g. the public address of a reverse proxy).
    pub allowed_origins: Vec<String>,
    /// HTTP connections open at once (more are closed at accept).
    pub max_connections: NonZeroUsize,
    /// Seconds a connection may take to send a request's headers; also how long an idle keep-alive connection
    /// is kept.
    pub header_timeout_secs: u64,
    /// PEM certificate chain (leaf first) for HTTPS (`HTTP_TLS_CERT`); with `tls_key`, the port serves HTTPS only.
    /// Re-read on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (`HTTP_TLS_KEY`); keep it mode 0600.
    pub tls_key: Option<PathBuf>,
}

impl HttpConfig {
    /// The certificate and key files when HTTPS is on.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            rate_limit_per_minute: 300,
            session_idle_secs: 8 * 3600,
            history_points: 30,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            max_connections: nz(1024),
            header_timeout_secs: 10,
        }
    }
}

/// `[store]`: the embedded SQLite database of history, events, alarms and the last state of every meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Keep history, events, alarms and meter state in SQLite (`STORE_ENABLED`).
    pub enabled: bool,
    /// Database file; relative paths are inside `gateway.data_dir` (default `ivy.db`).
    pub path: PathBuf,
    /// Readings older than this many days are pruned (`STORE_RETENTION_DAYS`).
    pub retention_days: u32,
    /// Events and cleared alarms older than this many days are pruned (`STORE_EVENTS_RETENTION_DAYS`).
    pub events_retention_days: u32,
    /// Size budget of the live data in MiB; the oldest readings go first when it is exceeded (`STORE_MAX_SIZE_MB`).
    pub max_size_mb: u64,
    /// A write transaction is committed at most this many milliseconds after its first row (`STORE_BATCH_MS`).
    pub batch_ms: u64,
    /// ... or when it holds this many readings (`STORE_BATCH_ROWS`).
    pub batch_rows: NonZeroUsize,
    /// Hub events queued for the writer before new ones are dropped and counted (`STORE_QUEUE`).
    pub queue: NonZeroUsize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            path: PathBuf::from("ivy.db"),
            retention_days: 30,
            events_retention_days: 365,
            max_size_mb: 1024,
            batch_ms: 100,
            batch_rows: nz(10_000),
            queue: nz(16_384),
        }
    }
}

impl StoreConfig {
    /// The database file: `path`, inside `data_dir` when relative.
    pub fn file(&self, data_dir: &std::path::Path) -> PathBuf {
        if self.path.is_absolute() { self.path.clone() } else { data_dir.join(&self.path) }
    }
}

/// How an environment variable changes the configuration.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// Environment variables understood (the original's names first), with what they set.
pub const ENV_VARS: &[(&str, &str, Setter)] = &[
    ("TCP_HOST", "meters.host", |c, v| set(&mut c.meters.host, v)),
    ("TCP_PORT", "meters.port", |c, v| set(&mut c.meters.port, v)),
    ("TCP_PLAINTEXT", "meters.plaintext", |c, v| set_bool(&mut c.meters.plaintext, v)),
    ("TCP_TLS_PORT", "meters.tls_port", |c, v| set(&mut c.meters.tls_port, v)),
    ("TCP_TLS_CERT", "meters.tls_cert", |c, v| set_path(&mut c.meters.tls_cert, v)),
    ("TCP_TLS_KEY", "meters.tls_key", |c, v| set_path(&mut c.meters.tls_key, v)),
    ("TCP_TLS_CLIENT_CA", "meters.tls_client_ca", |c, v| set_path(&mut c.meters.tls_client_ca, v)),
    ("TCP_CONNECTION_TIMEOUT", "meters.idle_timeout_secs (ms)", |c, v| {
        c.meters.idle_timeout_secs = parse_u64(v)?.div_ceil(1000);
        Ok(())
    }),
    ("IDLE_TIMEOUT_SECS", "meters.idle_timeout_secs", |c, v| set(&mut c.meters.idle_timeout_secs, v)),
    ("MAX_CONNECTIONS", "meters.max_connections", |c, v| set(&mut c.meters.max_connections, v)),
    ("MAX_CONNECTIONS_PER_IP", "meters.max_connections_per_ip", |c, v| set(&mut c.meters.max_connections_per_ip, v)),
    ("MAX_NEW_IDS_PER_IP_PER_MINUTE", "meters.max_new_ids_per_ip_per_minute", |c, v| {
        set(&mut c.meters.max_new_ids_per_ip_per_minute, v)
    }),
    ("RATE_LIMITING_ENABLED", "meters.rate_limiting_enabled", |c, v| set_bool(&mut c.meters.rate_limiting_enabled, v)),
    ("MAX_CONNECTION_ATTEMPTS", "meters.max_connection_attempts", |c, v| set(&mut c.meters.max_connection_attempts, v)),
    ("RATE_LIMIT_WINDOW_MS", "meters.rate_limit_window_ms", |c, v| set(&mut c.meters.rate_limit_window_ms, v)),
    ("RATE_LIMIT_BLOCK_DURATION", "meters.rate_limit_block_duration_ms", |c, v| {
        set(&mut c.meters.rate_limit_block_duration_ms, v)
    }),
    ("BUFFER_CAP", "meters.buffer_cap", |c, v| set(&mut c.meters.buffer_cap, v)),
    ("CLOCK_UTC_OFFSET_MINUTES", "meters.clock_utc_offset_minutes", |c, v| {
        c.meters.clock_utc_offset_minutes = v.trim().parse().map_err(|_| format!("'{v}' is not an integer"))?;
        Ok(())
    }),
    ("HEARTBEAT_ZERO_ADDRESS_ACTION", "meters.zero_address_action", |c, v| {
        c.meters.zero_address_action = match v.trim().to_ascii_lowercase().as_str() {
            "accept" => ZeroAddressAction::Accept,
            "use_ip" | "use-ip" => ZeroAddressAction::UseIp,
            other => return Err(format!("'{other}' is not accept or use_ip")),
        };
        Ok(())
    }),
    ("HEARTBEAT_ACK_PAYLOAD", "meters.heartbeat_ack", |c, v| {
        c.meters.heartbeat_ack = non_empty(v).map(Parsed::from);
        Ok(())
    }),
    ("METER_PASSWORD", "dlt645.password", |c, v| {
        c.dlt645.password = v.trim().to_owned();
        Ok(())
    }),
    ("METER_OPERATOR_CODE", "dlt645.operator_code", |c, v| {
        c.dlt645.operator_code = v.trim().to_owned();
        Ok(())
    }),
    ("AES_ENCRYPTION_KEY", "dlt645.relay_aes_key", |c, v| {
        c.dlt645.relay_aes_key = non_empty(v).map(Parsed::from);
        Ok(())
    }),
    ("DLT645_TIMEOUT_MS", "dlt645.timeout_ms", |c, v| set(&mut c.dlt645.timeout_ms, v)),
    ("DLT645_RETRIES", "dlt645.retries", |c, v| set(&mut c.dlt645.retries, v)),
    ("DLMS_PASSIVE_ONLY", "dlms.passive_only", |c, v| set_bool(&mut c.dlms.passive_only, v)),
    ("DLMS_CLIENT_ADDRESS", "dlms.client_wport", |c, v| set_u16_hex(&mut c.dlms.client_wport, v)),
    ("DLMS_IVY_DESTINATION", "dlms.server_wport", |c, v| set_u16_hex(&mut c.dlms.server_wport, v)),
    ("DLMS_ASSOCIATION_TIMEOUT", "dlms.association_timeout_ms", |c, v| set(&mut c.dlms.association_timeout_ms, v)),
    ("DLMS_QUERY_TIMEOUT", "dlms.response_timeout_ms", |c, v| set(&mut c.dlms.response_timeout_ms, v)),
    ("DLMS_MAX_PAYLOAD", "dlms.max_payload", |c, v| set(&mut c.dlms.max_payload, v)),
    ("POLLING_ENABLED", "polling.enabled", |c, v| set_bool(&mut c.polling.enabled, v)),
    ("POLLING_INTERVAL", "polling.interval_ms", |c, v| set(&mut c.polling.interval_ms, v)),
    ("POLLING_INTERVAL_MS", "polling.interval_ms", |c, v| set(&mut c.polling.interval_ms, v)),
    ("POLLING_REGISTER_GROUP", "polling.group", |c, v| {
        c.polling.group = v.trim().to_owned();
        Ok(())
    }),
    ("POLLING_MAX_CONCURRENT", "polling.max_concurrent", |c, v| set(&mut c.polling.max_concurrent, v)),
    ("COMMAND_TIMEOUT_MS", "commands.timeout_ms", |c, v| set(&mut c.commands.timeout_ms, v)),
    ("MQTT_HOST", "mqtt.host", |c, v| set(&mut c.mqtt.host, v)),
    ("MQTT_PORT", "mqtt.port", |c, v| set(&mut c.mqtt.port, v)),
    ("MQTT_WS_PORT", "mqtt.ws_port", |c, v| set(&mut c.mqtt.ws_port, v)),
    ("MQTT_TOPIC_PREFIX", "mqtt.topic_prefix", |c, v| {
        c.mqtt.topic_prefix = v.trim().to_owned();
        Ok(())
    }),
    ("MQTT_AUTH_ENABLED", "mqtt.auth_enabled", |c, v| set_bool(&mut c.mqtt.auth_enabled, v)),
    ("MQTT_USERS", "mqtt.users", |c, v| {
        c.mqtt.users = non_empty(v);
        Ok(())
    }),
    ("MQTT_MAX_CONNECTIONS", "mqtt.max_connections", |c, v| set(&mut c.mqtt.max_connections, v)),
    ("MQTT_SESSION_QUEUE_MESSAGES", "mqtt.session_queue_messages", |c, v| set(&mut c.mqtt.session_queue_messages, v)),
    ("MQTT_TLS_PORT", "mqtt.tls_port", |c, v| set(&mut c.mqtt.tls_port, v)),
    ("MQTT_WSS_PORT", "mqtt.wss_port", |c, v| set(&mut c.mqtt.wss_port, v)),
    ("MQTT_TLS_CERT", "mqtt.tls_cert", |c, v| set_path(&mut c.mqtt.tls_cert, v)),
    ("MQTT_TLS_KEY", "mqtt.tls_key", |c, v| set_path(&mut c.mqtt.tls_key, v)),
    ("MQTT_EMBEDDED", "mqtt.embedded", |c, v| set_bool(&mut c.mqtt.embedded, v)),
    ("MQTT_UPSTREAM_URL", "mqtt.upstream.url", |c, v| {
        c.mqtt.upstream.url = non_empty(v);
        Ok(())
    }),
    ("MQTT_UPSTREAM_USERNAME", "mqtt.upstream.username", |c, v| {
        c.mqtt.upstream.username = non_empty(v);
        Ok(())
    }),
    ("MQTT_UPSTREAM_PASSWORD", "mqtt.upstream.password", |c, v| {
        // A password is taken as given (spaces may be part of it); empty means none.
        c.mqtt.upstream.password = (!v.is_empty()).then(|| v.to_owned());
        Ok(())
    }),
    ("MQTT_UPSTREAM_CLIENT_ID", "mqtt.upstream.client_id", |c, v| {
        c.mqtt.upstream.client_id = non_empty(v);
        Ok(())
    }),
    ("MQTT_UPSTREAM_CA", "mqtt.upstream.ca", |c, v| set_path(&mut c.mqtt.upstream.ca, v)),
    ("MQTT_UPSTREAM_CERT", "mqtt.upstream.cert", |c, v| set_path(&mut c.mqtt.upstream.cert, v)),
    ("MQTT_UPSTREAM_KEY", "mqtt.upstream.key", |c, v| set_path(&mut c.mqtt.upstream.key, v)),
    ("MQTT_UPSTREAM_KEEPALIVE", "mqtt.upstream.keepalive_secs", |c, v| set(&mut c.mqtt.upstream.keepalive_secs, v)),
    ("MQTT_UPSTREAM_PROTOCOL", "mqtt.upstream.protocol", |c, v| {
        c.mqtt.upstream.protocol = v.trim().to_owned();
        Ok(())
    }),
    ("OUTBOX_MAX_MESSAGES", "outbox.max_messages", |c, v| set(&mut c.outbox.max_messages, v)),
    ("OUTBOX_MAX_MB", "outbox.max_mb", |c, v| set(&mut c.outbox.max_mb, v)),
    ("HTTP_HOST", "http.host", |c, v| set(&mut c.http.host, v)),
    ("HTTP_PORT", "http.port", |c, v| set(&mut c.http.port, v)),
    ("HTTP_RATE_LIMIT", "http.rate_limit_per_minute", |c, v| set(&mut c.http.rate_limit_per_minute, v)),
    ("HTTP_MAX_CONNECTIONS", "http.max_connections", |c, v| set(&mut c.http.max_connections, v)),
    ("HTTP_TLS_CERT", "http.tls_cert", |c, v| set_path(&mut c.http.tls_cert, v)),
    ("HTTP_TLS_KEY", "http.tls_key", |c, v| set_path(&mut c.http.tls_key, v)),
    ("DATA_DIR", "gateway.data_dir", |c, v| {
        c.gateway.data_dir = PathBuf::from(v.trim());
        Ok(())
    }),
    ("GATEWAY_NAME", "gateway.name", |c, v| {
        c.gateway.name = v.trim().to_owned();
        Ok(())
    }),
    ("GATEWAY_ID", "gateway.gateway_id", |c, v| {
        c.gateway.gateway_id = non_empty(v);
        Ok(())
    }),
    ("STATS_INTERVAL", "gateway.stats_interval_secs", |c, v| set(&mut c.gateway.stats_interval_secs, v)),
    ("LOG_FORMAT", "gateway.log_format", |c, v| {
        c.gateway.log_format = match v.trim().to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" | "" => LogFormat::Text,
            other => return Err(format!("'{other}' is not text or json")),
        };
        Ok(())
    }),
    ("ALARM_OFFLINE_GRACE", "alarms.offline_grace_secs", |c, v| set(&mut c.alarms.offline_grace_secs, v)),
    ("ALARM_OVERVOLTAGE", "alarms.overvoltage_v", |c, v| set(&mut c.alarms.overvoltage_v, v)),
    ("ALARM_UNDERVOLTAGE", "alarms.undervoltage_v", |c, v| set(&mut c.alarms.undervoltage_v, v)),
    ("ALARM_OVERCURRENT", "alarms.overcurrent_a", |c, v| set(&mut c.alarms.overcurrent_a, v)),
    ("ALARM_OVERLOAD_KW", "alarms.overload_kw", |c, v| set(&mut c.alarms.overload_kw, v)),
    ("ALARM_LOW_POWER_FACTOR", "alarms.low_power_factor", |c, v| set(&mut c.alarms.low_power_factor, v)),
    ("ALARM_HYSTERESIS_PERCENT", "alarms.hysteresis_percent", |c, v| set(&mut c.alarms.hysteresis_percent, v)),
    ("POLLING_ALIGN", "polling.align", |c, v| set(&mut c.polling.align, v)),
    ("IDENTIFY_AFTER_SECS", "meters.identify_after_secs", |c, v| set(&mut c.meters.identify_after_secs, v)),
    ("DETECTION_TIMEOUT_SECS", "meters.detection_timeout_secs", |c, v| set(&mut c.meters.detection_timeout_secs, v)),
    ("METER_TIMEZONE", "meters.timezone", |c, v| {
        c.meters.timezone = non_empty(v).map(Parsed::from);
        Ok(())
    }),
    ("STORE_ENABLED", "store.enabled", |c, v| set_bool(&mut c.store.enabled, v)),
    ("STORE_PATH", "store.path", |c, v| {
        c.store.path = PathBuf::from(v.trim());
        Ok(())
    }),
    ("STORE_RETENTION_DAYS", "store.retention_days", |c, v| set(&mut c.store.retention_days, v)),
    ("STORE_EVENTS_RETENTION_DAYS", "store.events_retention_days", |c, v| set(&mut c.store.events_retention_days, v)),
    ("STORE_MAX_SIZE_MB", "store.max_size_mb", |c, v| set(&mut c.store.max_size_mb, v)),
    ("STORE_BATCH_MS", "store.batch_ms", |c, v| set(&mut c.store.batch_ms, v)),
    ("STORE_BATCH_ROWS", "store.batch_rows", |c, v| set(&mut c.store.batch_rows, v)),
    ("STORE_QUEUE", "store.queue", |c, v| set(&mut c.store.queue, v)),
];

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// Parses an integer, decimal or `0x` hex.
fn parse_u64(v: &str) -> Result<u64, String> {
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| format!("'{v}' is not a non-negative integer"))
}

fn set<T: std::str::FromStr>(slot: &mut T, v: &str) -> Result<(), String> {
    let v = v.trim();
    // Integers may be hex; everything else parses as itself.
    if let Ok(n) = parse_u64(v)
        && let Ok(t) = n.to_string().parse::<T>()
    {
        *slot = t;
        return Ok(());
    }
    *slot = v.parse::<T>().map_err(|_| format!("'{v}' is not {}", expected::<T>()))?;
    Ok(())
}

/// What a value of type `T` must look like, in words (for error messages).
fn expected<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    let kind = name.rsplit("::").next().unwrap_or(name);
    match kind {
        "NonZero<usize>" | "NonZero<u32>" | "NonZero<u64>" => "a whole number of at least 1",
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number of at least 0",
        "i64" | "i32" => "a whole number",
        "f64" => "a number",
        "bool" => "true or false",
        "String" => "text",
        _ => "valid here",
    }
}

fn set_u16_hex(slot: &mut u16, v: &str) -> Result<(), String> {
    let n = parse_u64(v)?;
    *slot = u16::try_from(n).map_err(|_| format!("{n} does not fit in 16 bits"))?;
    Ok(())
}

/// A file path setting: an empty value unsets it.
fn set_path(slot: &mut Option<PathBuf>, v: &str) -> Result<(), String> {
    *slot = non_empty(v).map(PathBuf::from);
    Ok(())
}

fn set_bool(slot: &mut bool, v: &str) -> Result<(), String> {
    *slot = match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "0" | "false" | "no" | "off" => false,
        other => return Err(format!("'{other}' is not true or false")),
    };
    Ok(())
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file; `None` = `ivy-gateway.toml` in the working directory when it exists.
    pub file: Option<PathBuf>,
    /// The `.env` file; `None` = `.env` in the working directory when it exists.
    pub dotenv: Option<PathBuf>,
    /// Environment variables (later wins over `.env`).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The process environment and the default file names.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Sources { file, dotenv: None, env: std::env::vars().collect() }
    }
}

/// Loads and validates the configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut config = Config::default();

    let explicit_file = sources.file.is_some();
    let file = sources.file.clone().unwrap_or_else(|| PathBuf::from("ivy-gateway.toml"));
    if explicit_file || file.exists() {
        match std::fs::read_to_string(&file) {
            Ok(text) => match toml::from_str::<Config>(&text) {
                Ok(c) => config = c,
                Err(e) => errors.push(ConfigError::new(file.display().to_string(), toml_error(&e))),
            },
            Err(e) => errors.push(ConfigError::new(file.display().to_string(), format!("cannot read: {e}"))),
        }
    }

    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let explicit_dotenv = sources.dotenv.is_some();
    let dotenv = sources.dotenv.clone().unwrap_or_else(|| PathBuf::from(".env"));
    if explicit_dotenv || dotenv.exists() {
        match dotenvy::from_path_iter(&dotenv) {
            Ok(iter) => {
                for item in iter {
                    match item {
                        Ok((k, v)) => {
                            vars.insert(k, v);
                        }
                        Err(e) => errors.push(ConfigError::new(dotenv.display().to_string(), e.to_string())),
                    }
                }
            }
            Err(e) => errors.push(ConfigError::new(dotenv.display().to_string(), format!("cannot read: {e}"))),
        }
    }
    for (k, v) in &sources.env {
        vars.insert(k.clone(), v.clone());
    }
    for (name, _, setter) in ENV_VARS {
        if let Some(value) = vars.get(*name)
            && let Err(problem) = setter(&mut config, value)
        {
            errors.push(ConfigError::new(*name, problem));
        }
    }

    errors.extend(config.validate());
    if errors.is_empty() { Ok(config) } else { Err(ConfigErrors(errors)) }
}

/// The parser's own message: "TOML parse error at line L, column C", the line with a caret under the mistake, and
/// what is wrong; continuation lines indented under the list entry.
pub(crate) fn toml_error(e: &toml::de::Error) -> String {
    e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n    ")
}

fn check(errors: &mut Vec<ConfigError>, ok: bool, key: &str, problem: &str) {
    if !ok {
        errors.push(ConfigError::new(key, problem));
    }
}

fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// `scheme://host[:port]` as browsers send it in `Origin` (RFC 6454): http or https, no path, query or user.
pub fn is_origin(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) else { return false };
    !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']) && rest == rest.to_ascii_lowercase()
}

impl Config {
    /// Checks values against each other and their ranges; returns every problem.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        let m = &self.meters;
        check(&mut e, m.rate_limit_window_ms >= 1000, "meters.rate_limit_window_ms", "must be at least 1000");
        check(&mut e, m.idle_timeout_secs > 0, "meters.idle_timeout_secs", "must be at least 1");
        check(&mut e, m.sweep_interval_secs > 0, "meters.sweep_interval_secs", "must be at least 1");
        check(&mut e, (1024..=16 << 20).contains(&m.buffer_cap.get()), "meters.buffer_cap", "must be 1024..=16777216");
        check(&mut e, m.detection_timeout_secs > 0, "meters.detection_timeout_secs", "must be at least 1");
        check(&mut e, m.identify_after_secs > 0, "meters.identify_after_secs", "must be at least 1");
        if let Some(problem) = m.heartbeat_ack.as_ref().and_then(Parsed::problem) {
            check(&mut e, false, "meters.heartbeat_ack", problem);
        }
        check(
            &mut e,
            (100..=60_000).contains(&m.identity_probe_timeout_ms),
            "meters.identity_probe_timeout_ms",
            "must be 100..=60000",
        );
        for (i, net) in m.allowed_sources.iter().enumerate() {
            if let Some(problem) = net.problem() {
                check(&mut e, false, &format!("meters.allowed_sources[{i}]"), problem);
            }
        }
        for (id, nets) in &m.allowed_sources_by_meter {
            for (i, net) in nets.iter().enumerate() {
                if let Some(problem) = net.problem() {
                    check(&mut e, false, &format!("meters.allowed_sources_by_meter.{id}[{i}]"), problem);
                }
            }
        }
        for (i, rule) in m.registration_rules.iter().enumerate() {
            if let Err(problem) = rule.to_rule() {
                e.push(ConfigError::new(format!("meters.registration_rules[{i}]"), problem));
            }
        }

        let d = &self.dlt645;
        check(&mut e, d.timeout_ms >= 100, "dlt645.timeout_ms", "must be at least 100");
        check(&mut e, d.retries <= 10, "dlt645.retries", "must be at most 10");
        check(&mut e, d.wakeup_preamble <= 8, "dlt645.wakeup_preamble", "must be at most 8");
        check(
            &mut e,
            (-14 * 60..=14 * 60).contains(&m.clock_utc_offset_minutes),
            "meters.clock_utc_offset_minutes",
            "must be within ±840",
        );
        check(&mut e, is_digits(&d.password, 6), "dlt645.password", "must be 6 digits");
        check(&mut e, is_digits(&d.operator_code, 8), "dlt645.operator_code", "must be 8 digits");
        if let Some(problem) = d.relay_aes_key.as_ref().and_then(Parsed::problem) {
            check(&mut e, false, "dlt645.relay_aes_key", problem);
        }
        check(
            &mut e,
            !d.relay_aes_enabled || d.relay_aes_key.is_some(),
            "dlt645.relay_aes_enabled",
            "needs dlt645.relay_aes_key",
        );
        for (id, o) in &d.meter_overrides {
            let key = |f: &str| format!("dlt645.meter_overrides.{id}.{f}");
            if let Some(p) = &o.password {
                check(&mut e, is_digits(p, 6), &key("password"), "must be 6 digits");
            }
            if let Some(c) = &o.operator_code {
                check(&mut e, is_digits(c, 8), &key("operator_code"), "must be 8 digits");
            }
            if let Some(problem) = o.relay_aes_key.as_ref().and_then(Parsed::problem) {
                check(&mut e, false, &key("relay_aes_key"), problem);
            }
        }

        let l = &self.dlms;
        check(&mut e, (16..=65535).contains(&l.max_payload.get()), "dlms.max_payload", "must be 16..=65535");
        check(&mut e, l.conformance <= 0xFF_FFFF, "dlms.conformance", "must fit in 24 bits");
        check(&mut e, l.max_pdu_size >= 64, "dlms.max_pdu_size", "must be at least 64");
        check(&mut e, l.response_timeout_ms >= 100, "dlms.response_timeout_ms", "must be at least 100");
        check(&mut e, l.association_timeout_ms >= 100, "dlms.association_timeout_ms", "must be at least 100");
        for (i, code) in l.push_objects.iter().enumerate() {
            if let Some(problem) = code.problem() {
                check(&mut e, false, &format!("dlms.push_objects[{i}]"), problem);
            }
        }

        if let Some(problem) = m.timezone.as_ref().and_then(Parsed::problem) {
            e.push(ConfigError::new("meters.timezone", problem));
        }
        check(&mut e, m.capture_time_tolerance_secs >= 1, "meters.capture_time_tolerance_secs", "must be at least 1");
        for (id, o) in &m.meter_overrides {
            let key = |f: &str| format!("meters.meter_overrides.{id}.{f}");
            if let Some(problem) = o.timezone.as_ref().and_then(Parsed::problem) {
                e.push(ConfigError::new(key("timezone"), problem));
            }
            if let Some(off) = o.clock_utc_offset_minutes {
                check(
                    &mut e,
                    (-14 * 60..=14 * 60).contains(&off),
                    &key("clock_utc_offset_minutes"),
                    "must be within ±840",
                );
            }
        }
        check(
            &mut e,
            l.rejection_backoff_initial_ms >= 100,
            "dlms.rejection_backoff_initial_ms",
            "must be at least 100",
        );
        check(
            &mut e,
            l.rejection_backoff_max_ms >= l.rejection_backoff_initial_ms,
            "dlms.rejection_backoff_max_ms",
            "must be at least dlms.rejection_backoff_initial_ms",
        );
        for (i, t) in l.scaler_tables.iter().enumerate() {
            check(
                &mut e,
                !t.meters.is_empty(),
                &format!("dlms.scaler_tables[{i}].meters"),
                "must name at least one meter id or prefix*",
            );
            for (code, scaler) in &t.scalers {
                let key = format!("dlms.scaler_tables[{i}].scalers.\"{code}\"");
                check(
                    &mut e,
                    code.parse::<ivy_protocol::dlms::Obis>().is_ok(),
                    &key,
                    "must be keyed by an OBIS code like 1-0:32.7.0.255",
                );
                check(&mut e, (-12..=12).contains(scaler), &key, "scaler must be within -12..=12");
            }
        }

        let p = &self.polling;
        check(&mut e, p.interval_ms >= 100, "polling.interval_ms", "must be at least 100 (milliseconds)");
        check(&mut e, p.jitter_percent <= 50, "polling.jitter_percent", "must be at most 50");
        check(&mut e, !p.group.trim().is_empty(), "polling.group", "must not be empty");

        let c = &self.commands;
        check(&mut e, c.timeout_ms >= 100, "commands.timeout_ms", "must be at least 100");
        check(&mut e, (1..=10_000).contains(&c.queue_depth.get()), "commands.queue_depth", "must be 1..=10000");

        let a = &self.alarms;
        check(&mut e, (0.0..=50.0).contains(&a.hysteresis_percent), "alarms.hysteresis_percent", "must be 0..=50");
        check(&mut e, a.undervoltage_v < a.overvoltage_v, "alarms.undervoltage_v", "must be below overvoltage_v");

        let q = &self.mqtt;
        check(&mut e, q.publish_queue.get() >= 16, "mqtt.publish_queue", "must be at least 16");
        check(
            &mut e,
            valid_topic_prefix(&q.topic_prefix),
            "mqtt.topic_prefix",
            "must be non-empty, without +, # or empty levels",
        );
        let tls = q.tls_port != 0 || q.wss_port != 0;
        check(
            &mut e,
            !tls || (q.tls_cert.is_some() && q.tls_key.is_some()),
            "mqtt.tls_cert",
            "TLS ports need tls_cert and tls_key",
        );
        let tls_files = [&m.tls_cert, &m.tls_key, &m.tls_client_ca].iter().filter(|f| f.is_some()).count();
        check(
            &mut e,
            tls_files == 0 || tls_files == 3,
            "meters.tls_cert",
            "TLS on the meter port needs tls_cert, tls_key and tls_client_ca together",
        );
        check(
            &mut e,
            m.plaintext || m.tls().is_some(),
            "meters.plaintext",
            "off needs the TLS meter port (tls_cert, tls_key, tls_client_ca)",
        );
        check(&mut e, m.tls_handshake_timeout_secs > 0, "meters.tls_handshake_timeout_secs", "must be at least 1");
        let mut ports = vec![("mqtt.port", q.port)];
        if m.plaintext {
            ports.push(("meters.port", m.port));
        }
        if m.tls().is_some() {
            ports.push(("meters.tls_port", m.tls_port));
        }
        for (k, p) in [("mqtt.ws_port", q.ws_port), ("mqtt.tls_port", q.tls_port), ("mqtt.wss_port", q.wss_port)] {
            if p != 0 {
                ports.push((k, p));
            }
        }
        if self.http.enabled {
            ports.push(("http.port", self.http.port));
        }
        // Port 0 asks the system for a free port (tests); only fixed ports can collide.
        ports.retain(|(_, p)| *p != 0);
        for (i, (ka, pa)) in ports.iter().enumerate() {
            for (kb, pb) in ports.iter().skip(i + 1) {
                check(&mut e, pa != pb, kb, &format!("port {pb} is also used by {ka}"));
            }
        }
        check(
            &mut e,
            self.http.tls_cert.is_some() == self.http.tls_key.is_some(),
            "http.tls_cert",
            "HTTPS needs both tls_cert and tls_key",
        );
        check(&mut e, self.http.rate_limit_per_minute > 0, "http.rate_limit_per_minute", "must be at least 1");
        let st = &self.store;
        check(&mut e, st.retention_days > 0, "store.retention_days", "must be at least 1");
        check(&mut e, st.events_retention_days > 0, "store.events_retention_days", "must be at least 1");
        check(&mut e, st.max_size_mb >= 1, "store.max_size_mb", "must be at least 1");
        check(&mut e, (1..=60_000).contains(&st.batch_ms), "store.batch_ms", "must be 1..=60000");
        check(&mut e, (1..=1_000_000).contains(&st.batch_rows.get()), "store.batch_rows", "must be 1..=1000000");
        check(&mut e, st.queue.get() >= 16, "store.queue", "must be at least 16");
        check(&mut e, !st.path.as_os_str().is_empty(), "store.path", "must not be empty");
        let up = &q.upstream;
        if let Some(url) = &up.url {
            if let Err(problem) = UpstreamUrl::parse(url) {
                e.push(ConfigError { key: "mqtt.upstream.url".into(), problem });
            }
            check(
                &mut e,
                self.store.enabled,
                "mqtt.upstream.url",
                "upstream MQTT needs the store (its outbox keeps messages until the broker acknowledges them): \
                 set store.enabled = true (STORE_ENABLED) or remove the upstream URL",
            );
        }
        check(
            &mut e,
            q.embedded || up.url.is_some(),
            "mqtt.embedded",
            "with the embedded broker off, set mqtt.upstream.url (MQTT_UPSTREAM_URL): nothing would be published",
        );
        check(
            &mut e,
            matches!(up.protocol.as_str(), "3.1.1" | "5"),
            "mqtt.upstream.protocol",
            "must be \"3.1.1\" or \"5\"",
        );
        check(&mut e, (5..=3600).contains(&up.keepalive_secs), "mqtt.upstream.keepalive_secs", "must be 5..=3600");
        check(&mut e, up.reconnect_min_ms >= 10, "mqtt.upstream.reconnect_min_ms", "must be at least 10");
        check(
            &mut e,
            up.reconnect_max_ms >= up.reconnect_min_ms,
            "mqtt.upstream.reconnect_max_ms",
            "must be at least reconnect_min_ms",
        );
        check(&mut e, (1..=10_000).contains(&up.inflight), "mqtt.upstream.inflight", "must be 1..=10000");
        check(
            &mut e,
            up.cert.is_some() == up.key.is_some(),
            "mqtt.upstream.cert",
            "mutual TLS needs both cert and key",
        );
        check(&mut e, self.outbox.max_messages >= 100, "outbox.max_messages", "must be at least 100");
        check(&mut e, self.outbox.max_mb >= 1, "outbox.max_mb", "must be at least 1");
        check(&mut e, q.max_packet_bytes >= 1024, "mqtt.max_packet_bytes", "must be at least 1024");
        check(&mut e, q.handshake_timeout_secs > 0, "mqtt.handshake_timeout_secs", "must be at least 1");
        let h = &self.http;
        check(&mut e, h.header_timeout_secs > 0, "http.header_timeout_secs", "must be at least 1");
        for (i, origin) in h.allowed_origins.iter().enumerate() {
            check(
                &mut e,
                is_origin(origin),
                &format!("http.allowed_origins[{i}]"),
                "must be an origin: http(s)://host[:port], without a path",
            );
        }
        let au = &self.auth;
        check(&mut e, au.failure_delay_ms > 0, "auth.failure_delay_ms", "must be at least 1");
        check(&mut e, self.gateway.stats_interval_secs > 0, "gateway.stats_interval_secs", "must be at least 1");
        if let Some(id) = &self.gateway.gateway_id {
            check(
                &mut e,
                ivy_protocol::registration::MeterId::new(id.clone()).is_ok(),
                "gateway.gateway_id",
                "must match ^[A-Za-z0-9_-]{1,64}$",
            );
        }
        e
    }

    /// The registration rules: the built-in EM114070 heartbeat (with the configured ack), then the configured ones.
    pub fn registration_rules(&self) -> Vec<ivy_protocol::registration::RegistrationRule> {
        let mut builtin = ivy_protocol::registration::RegistrationRule::em114070();
        builtin.ack = self.meters.heartbeat_ack.as_ref().and_then(Parsed::get).map(|h| h.0.clone());
        let mut rules = vec![builtin];
        rules.extend(self.meters.registration_rules.iter().filter_map(|r| r.to_rule().ok()));
        rules
    }

    /// Writes the effective configuration as TOML (for `check-config`), with secrets masked.
    pub fn to_toml_masked(&self) -> String {
        let mut masked = self.clone();
        let mask = |s: &mut String| *s = "*".repeat(s.len().min(8));
        mask(&mut masked.dlt645.password);
        mask(&mut masked.dlt645.operator_code);
        for o in masked.dlt645.meter_overrides.values_mut() {
            o.password.as_mut().map(mask);
            o.operator_code.as_mut().map(mask);
            o.relay_aes_key.as_mut().map(Parsed::mask);
        }
        masked.dlt645.relay_aes_key.as_mut().map(Parsed::mask);
        masked.dlms.lls_password.as_mut().map(mask);
        masked.mqtt.upstream.password.as_mut().map(mask);
        if let Some(users) = masked.mqtt.users.as_mut() {
            *users = users
                .split(',')
                .map(|u| {
                    let mut parts: Vec<String> = u.split(':').map(str::to_owned).collect();
                    if let Some(p) = parts.get_mut(1) {
                        *p = "***".into();
                    }
                    parts.join(":")
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Whether `p` can prefix MQTT topics: non-empty, no wildcards, no NUL, no empty level (SPEC 4.2).
pub fn valid_topic_prefix(p: &str) -> bool {
    !p.is_empty() && !p.contains(['+', '#', '\0']) && p.split('/').all(|l| !l.is_empty())
}

impl RegistrationRuleConfig {
    /// The protocol-crate rule, or why it is invalid.
    pub fn to_rule(&self) -> Result<ivy_protocol::registration::RegistrationRule, String> {
        let prefix = hex::decode(self.prefix.replace(' ', "")).map_err(|e| format!("prefix: {e}"))?;
        let ack = match &self.ack {
            Some(a) => Some(hex::decode(a.replace(' ', "")).map_err(|e| format!("ack: {e}"))?),
            None => None,
        };
        let rule = ivy_protocol::registration::RegistrationRule {
            name: self.name.clone(),
            prefix,
            id_offset: self.id_offset,
            id_length: self.id_length,
            packet_length: self.packet_length.unwrap_or(self.id_offset + self.id_length),
            encoding: self.encoding.parse()?,
            ack,
        };
        rule.validate().map_err(|e| e.to_string())?;
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(toml_text: Option<&str>, dotenv: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let file = toml_text.map(|t| {
            let p = dir.path().join("ivy-gateway.toml");
            std::fs::write(&p, t).unwrap();
            p
        });
        let dotenv_path = dir.path().join(".env");
        if let Some(d) = dotenv {
            std::fs::write(&dotenv_path, d).unwrap();
        }
        let sources = Sources {
            file,
            dotenv: Some(dotenv_path).filter(|_| dotenv.is_some()),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        load(&sources)
    }

    #[test]
    fn a_zero_size_is_refused_at_load_naming_the_key() {
        let e = load_with(None, None, &[("MAX_CONNECTIONS", "0")]).unwrap_err().to_string();
        assert!(e.contains("MAX_CONNECTIONS: '0' is not a whole number of at least 1"), "{e}");
        let e = load_with(Some("[store]\nqueue = 0\n"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("queue"), "{e}");
        let e = load_with(Some("[commands]\nqueue_depth = -3\n"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("queue_depth"), "{e}");
        let c = load_with(None, None, &[("MAX_CONNECTIONS", "7"), ("MAX_NEW_IDS_PER_IP_PER_MINUTE", "0")]).unwrap();
        assert_eq!(c.meters.max_connections.get(), 7);
        assert_eq!(c.meters.max_new_ids_per_ip_per_minute, 0);
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = load_with(None, None, &[]).unwrap();
        assert_eq!(c.meters.port, 8899);
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.ws_port, 9001);
        assert_eq!(c.http.port, 3000);
        assert_eq!(c.gateway.data_dir, PathBuf::from("./data"));
        assert!(c.dlms.passive_only);
        assert!(c.mqtt.auth_enabled);
        assert_eq!(c.polling.interval_ms, 60_000);
    }

    #[test]
    fn layering_file_then_dotenv_then_env() {
        let c = load_with(
            Some("[meters]\nport = 9000\n[polling]\ninterval_ms = 5000\n[mqtt]\nport = 1900\n"),
            Some("TCP_PORT=9100\nPOLLING_INTERVAL=7000\n"),
            &[("TCP_PORT", "9200"), ("DLMS_CLIENT_ADDRESS", "0x0010"), ("DLMS_PASSIVE_ONLY", "false")],
        )
        .unwrap();
        assert_eq!(c.meters.port, 9200, "environment wins");
        assert_eq!(c.polling.interval_ms, 7000, ".env wins over the file");
        assert_eq!(c.mqtt.port, 1900, "file wins over defaults");
        assert_eq!(c.dlms.client_wport, 0x10, "hex parses as hex");
        assert!(!c.dlms.passive_only);
    }

    #[test]
    fn errors_name_the_key() {
        let err = load_with(None, None, &[("TCP_PORT", "eighty"), ("MQTT_AUTH_ENABLED", "maybe")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("TCP_PORT"), "{text}");
        assert!(text.contains("MQTT_AUTH_ENABLED"), "{text}");

        let err = load_with(Some("[meters]\nprot = 1\n"), None, &[]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");

        let err = load_with(Some("[dlt645]\npassword = \"12\"\n"), None, &[]).unwrap_err();
        assert!(err.to_string().contains("dlt645.password"), "{err}");

        let err = load_with(None, None, &[("HTTP_PORT", "1883")]).unwrap_err();
        assert!(err.to_string().contains("http.port"), "{err}");

        let err = load_with(
            Some("[[meters.registration_rules]]\nname = \"x\"\nprefix = \"zz\"\nid_offset = 1\nid_length = 2\n"),
            None,
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("meters.registration_rules[0]"), "{err}");
    }

    #[test]
    fn upstream_urls_parse_and_upstream_needs_the_store() {
        let url = |u: &str| UpstreamUrl::parse(u);
        assert_eq!(url("mqtt://broker:1884").unwrap(), UpstreamUrl { host: "broker".into(), port: 1884, tls: false });
        assert_eq!(url("mqtts://broker.example.com").unwrap().port, 8883);
        assert_eq!(url("mqtt://10.0.0.1").unwrap().port, 1883);
        assert_eq!(url("mqtts://[::1]:8884").unwrap(), UpstreamUrl { host: "::1".into(), port: 8884, tls: true });
        for bad in
            ["tcp://x:1883", "mqtt://", "mqtt://x:0", "mqtt://x:99999", "mqtt://u:p@x", "mqtt://x/path", "x:1883"]
        {
            assert!(url(bad).is_err(), "{bad}");
        }
        let err = load_with(None, None, &[("MQTT_UPSTREAM_URL", "mqtt://b:1883"), ("STORE_ENABLED", "false")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.upstream.url") && err.contains("store"), "{err}");
        let err = load_with(None, None, &[("MQTT_EMBEDDED", "false")]).unwrap_err().to_string();
        assert!(err.contains("mqtt.embedded"), "{err}");
        let err = load_with(None, None, &[("MQTT_UPSTREAM_URL", "mqtt://b"), ("MQTT_UPSTREAM_PROTOCOL", "4")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.upstream.protocol"), "{err}");
        let c = load_with(
            None,
            None,
            &[("MQTT_UPSTREAM_URL", "mqtts://b"), ("MQTT_EMBEDDED", "off"), ("MQTT_UPSTREAM_PASSWORD", "s3cret!")],
        )
        .unwrap();
        assert!(!c.mqtt.embedded);
        assert!(!c.to_toml_masked().contains("s3cret!"));
    }

    #[test]
    fn example_file_loads_and_states_the_defaults() {
        let example = include_str!("../../../deploy/ivy-gateway.example.toml");
        let from_example = load_with(Some(example), None, &[]).unwrap();
        let defaults = load_with(None, None, &[]).unwrap();
        assert_eq!(from_example.to_toml_masked(), defaults.to_toml_masked());
    }

    #[test]
    fn every_environment_variable_is_documented() {
        let doc = include_str!("../../../docs/CONFIG.md");
        for (name, key, _) in ENV_VARS {
            assert!(doc.contains(&format!("`{name}`")), "{name} ({key}) is missing from docs/CONFIG.md");
        }
    }

    #[test]
    fn meter_zones_and_scaler_tables_are_checked_under_their_keys() {
        let c = load_with(
            Some(
                "[meters]\ntimezone = \"Europe/Berlin\"\n[meters.meter_overrides.m1]\ntimezone = \"Asia/Shanghai\"\n\
                 [[dlms.scaler_tables]]\nmeters = [\"AIDON*\"]\nscalers = { \"1-0:32.7.0.255\" = -1 }\n",
            ),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            c.meters.timezone.as_ref().and_then(|z| z.get()).map(|z| z.name()).as_deref(),
            Some("Europe/Berlin")
        );
        assert!(c.dlms.scaler_tables[0].applies_to("AIDON0001") && !c.dlms.scaler_tables[0].applies_to("KFM1"));
        let err = load_with(
            Some("[meters]\ntimezone = \"Mars/Olympus\"\n[[dlms.scaler_tables]]\nmeters = []\nscalers = { \"1.8\" = 40 }\n"),
            None,
            &[("METER_TIMEZONE", "Europe/Nowhere")],
        )
        .unwrap_err()
        .to_string();
        for key in ["meters.timezone", "dlms.scaler_tables[0].meters", "dlms.scaler_tables[0].scalers"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn masked_output_hides_secrets() {
        let c =
            load_with(None, None, &[("MQTT_USERS", "alice:secret1,bob:secret2:viewer"), ("METER_PASSWORD", "123456")])
                .unwrap();
        let text = c.to_toml_masked();
        assert!(!text.contains("secret1") && !text.contains("123456"), "{text}");
        assert!(text.contains("alice:***") && text.contains("bob:***:viewer"), "{text}");
    }

    #[test]
    fn text_values_are_parsed_once_when_loaded() {
        let key = "000102030405060708090a0b0c0d0e0f";
        let c = load_with(
            Some(&format!(
                "[meters]\nheartbeat_ack = \"AA 55\"\n[dlt645]\nrelay_aes_key = \"{key}\"\n\
                 [dlms]\npush_objects = [\"1-0:1.8.0.255\"]\n"
            )),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(c.meters.heartbeat_ack.as_ref().and_then(Parsed::get), Some(&HexBytes(vec![0xAA, 0x55])));
        assert_eq!(c.registration_rules()[0].ack, Some(vec![0xAA, 0x55]));
        let aes = c.dlt645.relay_aes_key.as_ref().and_then(Parsed::get).map(|k| k.0);
        assert_eq!(aes, Some(core::array::from_fn(|i| i as u8)));
        assert_eq!(c.dlms.push_objects[0].get(), Some(&ivy_protocol::dlms::Obis::new(1, 0, 1, 8, 0, 255)));
        let text = c.to_toml_masked();
        assert!(!text.contains(key) && !format!("{c:?}").contains("[0, 1, 2"), "{text}");

        let err = load_with(
            Some("[dlt645]\nrelay_aes_key = \"0011\"\n[dlms]\npush_objects = [\"1.8.0\"]\n"),
            None,
            &[("HEARTBEAT_ACK_PAYLOAD", "xyz")],
        )
        .unwrap_err()
        .to_string();
        for named in ["dlt645.relay_aes_key", "dlms.push_objects[0]", "meters.heartbeat_ack"] {
            assert!(err.contains(named), "{named}: {err}");
        }
    }
}
