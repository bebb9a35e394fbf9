//! The stable error codes of command responses (SPEC 5) and the failed-operation type every room reports with.
//! A leaf of the module graph: everything may use it, it uses nothing of the gateway.

/// Stable error codes of command responses (SPEC 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not JSON.
    InvalidJson,
    /// No request id.
    MissingId,
    /// No method.
    MissingMethod,
    /// Unknown method.
    UnknownMethod,
    /// Bad or missing parameters.
    InvalidParams,
    /// No such register/group.
    UnknownRegister,
    /// The meter is not connected (or not identified yet).
    MeterNotConnected,
    /// The meter's protocol cannot do this.
    UnsupportedForProtocol,
    /// No answer in time.
    Timeout,
    /// The meter answered with an error.
    MeterError,
    /// The DLMS association was rejected.
    AssociationRejected,
    /// The connection ended before the answer.
    ConnectionClosed,
    /// The meter's queue is full.
    Busy,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The command needs a secret (password, operator code, key) and the meter's identity was contested within
    /// `meters.secrets_quiet_secs`: the secret is not sent to a connection that may be an impostor.
    IdentityContested,
}

impl ErrorCode {
    /// The snake_case code.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingId => "missing_id",
            ErrorCode::MissingMethod => "missing_method",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::UnknownRegister => "unknown_register",
            ErrorCode::MeterNotConnected => "meter_not_connected",
            ErrorCode::UnsupportedForProtocol => "unsupported_for_protocol",
            ErrorCode::Timeout => "timeout",
            ErrorCode::MeterError => "meter_error",
            ErrorCode::AssociationRejected => "association_rejected",
            ErrorCode::ConnectionClosed => "connection_closed",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::IdentityContested => "identity_contested",
        }
    }
}

/// A failed operation: a stable code, a message, and optional details (decoded error bits, DLMS result names).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// What the meter said, decoded (the command reply shows it beside the message).
    pub details: Option<ErrorDetails>,
}

/// What a meter's refusal said, decoded; `commands::reply` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorDetails {
    /// A DL/T 645 abnormal reply: its error byte and the names of the bits set.
    Dlt645 {
        /// The error byte.
        code: u8,
        /// Names of its bits (`password_wrong`, `no_requested_data`...).
        flags: Vec<&'static str>,
    },
    /// A DLMS data-access-result (Blue Book).
    DataAccess {
        /// The code.
        code: u8,
        /// Its name.
        name: String,
    },
    /// A DLMS action-result (Blue Book).
    Action {
        /// The code.
        code: u8,
        /// Its name.
        name: String,
    },
    /// A reply that could not be parsed: the parse error's kind (`invalid_choice`, `truncated`...) and the APDU it
    /// was meant to be (`get-response`).
    Malformed {
        /// The parse error's kind, as counted in `ivy_parse_errors_total`.
        parse_error: &'static str,
        /// The APDU's name.
        apdu: &'static str,
    },
}

impl OpError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError { code, message: message.into(), details: None }
    }

    /// With details.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.details = Some(details);
        self
    }
}
