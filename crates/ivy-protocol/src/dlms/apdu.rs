//! DLMS/COSEM APDUs (SPEC 2.3): the ACSE APDUs (AARQ, AARE, RLRQ, RLRE, BER-encoded) and the xDLMS ones
//! (GET/SET/ACTION requests and responses, EventNotification, DataNotification, ExceptionResponse,
//! ConfirmedServiceError, A-XDR-encoded). Every APDU can be both built and parsed, so the gateway (client) and the
//! meter simulator (server) share one codec.

use super::axdr::{AxdrError, Data, decode_length, encode_length};
use super::datetime::CosemDateTime;
use super::obis::Obis;
use std::fmt;

// ---------------------------------------------------------------- small types

/// The invoke-id-and-priority byte: invoke id in bits 0..3, service class (confirmed) bit 6, priority (high) bit 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvokeIdAndPriority(pub u8);

impl InvokeIdAndPriority {
    /// Builds the byte.
    pub fn new(invoke_id: u8, priority_high: bool, confirmed: bool) -> Self {
        InvokeIdAndPriority(
            (invoke_id & 0x0F) | if confirmed { 0x40 } else { 0 } | if priority_high { 0x80 } else { 0 },
        )
    }
    /// Invoke id 0..15.
    pub fn invoke_id(&self) -> u8 {
        self.0 & 0x0F
    }
    /// Priority bit.
    pub fn priority_high(&self) -> bool {
        self.0 & 0x80 != 0
    }
    /// Service-class bit.
    pub fn confirmed(&self) -> bool {
        self.0 & 0x40 != 0
    }
}

/// class id, instance (OBIS), attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttributeDescriptor {
    /// Interface class.
    pub class_id: u16,
    /// Instance.
    pub obis: Obis,
    /// Attribute index.
    pub attribute: u8,
}

impl AttributeDescriptor {
    /// A descriptor.
    pub fn new(class_id: u16, obis: Obis, attribute: u8) -> Self {
        AttributeDescriptor { class_id, obis, attribute }
    }
}

/// class id, instance, method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodDescriptor {
    /// Interface class.
    pub class_id: u16,
    /// Instance.
    pub obis: Obis,
    /// Method index.
    pub method: u8,
}

/// Selective access: selector and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectiveAccess {
    /// Access selector.
    pub selector: u8,
    /// Parameters.
    pub parameters: Data,
}

/// A data-access-result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataAccessResult(pub u8);

impl DataAccessResult {
    /// Success.
    pub const SUCCESS: DataAccessResult = DataAccessResult(0);
    /// The object does not exist.
    pub const OBJECT_UNDEFINED: DataAccessResult = DataAccessResult(4);

    /// The standard name (`object-undefined`), or `unknown(N)`.
    pub fn name(&self) -> String {
        data_access_result_name(self.0).map(str::to_owned).unwrap_or_else(|| format!("unknown({})", self.0))
    }
}

impl fmt::Display for DataAccessResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Data-access-result names (standard numbering).
pub fn data_access_result_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "success",
        1 => "hardware-fault",
        2 => "temporary-failure",
        3 => "read-write-denied",
        4 => "object-undefined",
        9 => "object-class-inconsistent",
        11 => "object-unavailable",
        12 => "type-unmatched",
        13 => "scope-of-access-violated",
        14 => "data-block-unavailable",
        15 => "long-get-aborted",
        16 => "no-long-get-in-progress",
        17 => "long-set-aborted",
        18 => "no-long-set-in-progress",
        19 => "data-block-number-invalid",
        250 => "other-reason",
        _ => return None,
    })
}

/// Action-result names (standard numbering).
pub fn action_result_name(code: u8) -> String {
    let name = match code {
        0 => "success",
        1 => "hardware-fault",
        2 => "temporary-failure",
        3 => "read-write-denied",
        4 => "object-undefined",
        9 => "object-class-inconsistent",
        11 => "object-unavailable",
        12 => "type-unmatched",
        13 => "scope-of-access-violated",
        14 => "data-block-unavailable",
        15 => "long-action-aborted",
        16 => "no-long-action-in-progress",
        250 => "other-reason",
        _ => return format!("unknown({code})"),
    };
    name.to_owned()
}

/// Either data or a data-access-result (Get-Data-Result).
pub type GetDataResult = Result<Data, DataAccessResult>;

/// The 24-bit conformance block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conformance(pub u32);

/// Conformance bit names, bit 0 (most significant of the 24) first.
pub const CONFORMANCE_BITS: [&str; 24] = [
    "reserved-zero",
    "general-protection",
    "general-block-transfer",
    "read",
    "write",
    "unconfirmed-write",
    "delta-value-encoding",
    "reserved-seven",
    "attribute0-supported-with-set",
    "priority-mgmt-supported",
    "attribute0-supported-with-get",
    "block-transfer-with-get-or-read",
    "block-transfer-with-set-or-write",
    "block-transfer-with-action",
    "multiple-references",
    "information-report",
    "data-notification",
    "access",
    "parameterized-access",
    "get",
    "set",
    "selective-access",
    "event-notification",
    "action",
];

impl Conformance {
    /// What the original gateway (and the EM114070) uses: `00 1E 1D`.
    pub const DEFAULT: Conformance = Conformance(0x00_1E1D);

    fn mask(bit: usize) -> u32 {
        1 << (23 - bit.min(23))
    }

    /// Whether the named bit is set.
    pub fn has(&self, name: &str) -> bool {
        CONFORMANCE_BITS.iter().position(|n| *n == name).is_some_and(|i| self.0 & Self::mask(i) != 0)
    }

    /// Names of the set bits.
    pub fn names(&self) -> Vec<&'static str> {
        CONFORMANCE_BITS.iter().enumerate().filter(|(i, _)| self.0 & Self::mask(*i) != 0).map(|(_, n)| *n).collect()
    }

    /// The 3 bytes.
    pub fn bytes(&self) -> [u8; 3] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }

    /// Multiple references (GET-with-list).
    pub fn multiple_references(&self) -> bool {
        self.has("multiple-references")
    }

    /// Block transfer for GET.
    pub fn block_transfer_get(&self) -> bool {
        self.has("block-transfer-with-get-or-read")
    }
}

/// An application context name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApplicationContext {
    /// Logical names, no ciphering.
    LnNoCipher,
    /// Short names, no ciphering.
    SnNoCipher,
    /// Logical names with ciphering.
    LnCipher,
    /// Short names with ciphering.
    SnCipher,
    /// Anything else: the OID bytes.
    Other(Vec<u8>),
}

const CONTEXT_PREFIX: [u8; 6] = [0x60, 0x85, 0x74, 0x05, 0x08, 0x01];
/// OID 2.16.756.5.8.2.1 (low-level security).
pub const MECHANISM_LLS: [u8; 7] = [0x60, 0x85, 0x74, 0x05, 0x08, 0x02, 0x01];

impl ApplicationContext {
    /// The OID bytes.
    pub fn oid(&self) -> Vec<u8> {
        let last = match self {
            ApplicationContext::LnNoCipher => 1,
            ApplicationContext::SnNoCipher => 2,
            ApplicationContext::LnCipher => 3,
            ApplicationContext::SnCipher => 4,
            ApplicationContext::Other(oid) => return oid.clone(),
        };
        let mut v = CONTEXT_PREFIX.to_vec();
        v.push(last);
        v
    }

    /// From the OID bytes.
    pub fn from_oid(oid: &[u8]) -> Self {
        match oid.split_last() {
            Some((last, prefix)) if prefix == CONTEXT_PREFIX => match last {
                1 => ApplicationContext::LnNoCipher,
                2 => ApplicationContext::SnNoCipher,
                3 => ApplicationContext::LnCipher,
                4 => ApplicationContext::SnCipher,
                _ => ApplicationContext::Other(oid.to_vec()),
            },
            _ => ApplicationContext::Other(oid.to_vec()),
        }
    }

    /// `LN_NO_CIPHER`, ...
    pub fn name(&self) -> &'static str {
        match self {
            ApplicationContext::LnNoCipher => "LN_NO_CIPHER",
            ApplicationContext::SnNoCipher => "SN_NO_CIPHER",
            ApplicationContext::LnCipher => "LN_CIPHER",
            ApplicationContext::SnCipher => "SN_CIPHER",
            ApplicationContext::Other(_) => "OTHER",
        }
    }
}

// ---------------------------------------------------------------- errors

/// What went wrong while parsing an APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApduErrorKind {
    /// The bytes end early (or a BER length claims more than is present).
    Truncated,
    /// The first byte is not an APDU the gateway knows.
    UnknownApdu,
    /// A CHOICE byte with an undefined value.
    InvalidChoice,
    /// A structure that does not follow the encoding rules.
    Malformed,
    /// An A-XDR data error inside.
    Data(AxdrError),
}

/// A parse error with what was decoded before it (for diagnostics).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{apdu}: {message}")]
pub struct ApduError {
    /// Kind.
    pub kind: ApduErrorKind,
    /// APDU tag.
    pub tag: u8,
    /// APDU name.
    pub apdu: &'static str,
    /// Words.
    pub message: String,
    /// BER length declared by an ACSE APDU.
    pub declared_length: Option<usize>,
    /// Bytes actually present after the length.
    pub actual_body_length: Option<usize>,
    /// invoke-id-and-priority when it was read.
    pub invoke_id_and_priority: Option<u8>,
    /// Result code when it was read (ACTION.response).
    pub result: Option<u8>,
}

impl ApduError {
    fn new(kind: ApduErrorKind, tag: u8, message: impl Into<String>) -> Self {
        ApduError {
            kind,
            tag,
            apdu: apdu_name(tag),
            message: message.into(),
            declared_length: None,
            actual_body_length: None,
            invoke_id_and_priority: None,
            result: None,
        }
    }

    /// snake_case kind (`truncated`, `unknown_apdu`, `invalid_choice`, `malformed`, or the A-XDR error's).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ApduErrorKind::Truncated => "truncated",
            ApduErrorKind::UnknownApdu => "unknown_apdu",
            ApduErrorKind::InvalidChoice => "invalid_choice",
            ApduErrorKind::Malformed => "malformed",
            ApduErrorKind::Data(e) => e.kind(),
        }
    }
}

/// The name of an APDU tag (`GET.response`).
pub fn apdu_name(tag: u8) -> &'static str {
    match tag {
        0x60 => "AARQ",
        0x61 => "AARE",
        0x62 => "RLRQ",
        0x63 => "RLRE",
        0xC0 => "GET.request",
        0xC1 => "SET.request",
        0xC2 => "EventNotification",
        0xC3 => "ACTION.request",
        0xC4 => "GET.response",
        0xC5 => "SET.response",
        0xC7 => "ACTION.response",
        0xD8 => "ExceptionResponse",
        0x0E => "ConfirmedServiceError",
        0x0F => "DataNotification",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------- the APDU types

/// AARQ (association request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aarq {
    /// Application context.
    pub application_context: ApplicationContext,
    /// Authentication mechanism OID (LLS: [`MECHANISM_LLS`]).
    pub mechanism: Option<Vec<u8>>,
    /// Calling authentication value (the LLS password).
    pub calling_authentication: Option<Vec<u8>>,
    /// Proposed DLMS version (6).
    pub dlms_version: u8,
    /// Proposed conformance.
    pub conformance: Conformance,
    /// Client max receive PDU size.
    pub max_pdu: u16,
}

impl Default for Aarq {
    /// Exactly what the EM114070 accepts: `60 1D A1 09 06 07 60 85 74 05 08 01 01 BE 10 04 0E 01 00 00 00 06 5F 1F
    /// 04 00 00 1E 1D FF FF`.
    fn default() -> Self {
        Aarq {
            application_context: ApplicationContext::LnNoCipher,
            mechanism: None,
            calling_authentication: None,
            dlms_version: 6,
            conformance: Conformance::DEFAULT,
            max_pdu: 0xFFFF,
        }
    }
}

impl Aarq {
    /// Low-level security with `password`.
    pub fn with_lls(mut self, password: &[u8]) -> Self {
        self.mechanism = Some(MECHANISM_LLS.to_vec());
        self.calling_authentication = Some(password.to_vec());
        self
    }
}

/// Where an association diagnostic comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiagnosticSource {
    /// acse-service-user.
    User,
    /// acse-service-provider.
    Provider,
}

/// result-source-diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// Source.
    pub source: DiagnosticSource,
    /// Value.
    pub value: u8,
}

impl Diagnostic {
    /// Source name.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            DiagnosticSource::User => "acse-service-user",
            DiagnosticSource::Provider => "acse-service-provider",
        }
    }

    /// Value name.
    pub fn name(&self) -> &'static str {
        match (self.source, self.value) {
            (_, 0) => "null",
            (_, 1) => "no-reason-given",
            (DiagnosticSource::User, 2) => "application-context-name-not-supported",
            (DiagnosticSource::User, 3) => "calling-AP-title-not-recognized",
            (DiagnosticSource::User, 4) => "calling-AP-invocation-identifier-not-recognized",
            (DiagnosticSource::User, 5) => "calling-AE-qualifier-not-recognized",
            (DiagnosticSource::User, 6) => "calling-AE-invocation-identifier-not-recognized",
            (DiagnosticSource::User, 7) => "called-AP-title-not-recognized",
            (DiagnosticSource::User, 8) => "called-AP-invocation-identifier-not-recognized",
            (DiagnosticSource::User, 9) => "called-AE-qualifier-not-recognized",
            (DiagnosticSource::User, 10) => "called-AE-invocation-identifier-not-recognized",
            (DiagnosticSource::User, 11) => "authentication-mechanism-name-not-recognised",
            (DiagnosticSource::User, 12) => "authentication-mechanism-name-required",
            (DiagnosticSource::User, 13) => "authentication-failure",
            (DiagnosticSource::User, 14) => "authentication-required",
            (DiagnosticSource::Provider, 2) => "no-common-acse-version",
            _ => "unknown",
        }
    }
}

/// The xDLMS InitiateResponse inside an accepted AARE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InitiateResponse {
    /// Negotiated DLMS version.
    pub dlms_version: u8,
    /// Negotiated conformance.
    pub conformance: Conformance,
    /// Server max receive PDU size.
    pub max_pdu: u16,
    /// VAA name.
    pub vaa_name: u16,
}

/// AARE (association response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aare {
    /// Application context.
    pub application_context: ApplicationContext,
    /// 0 accepted, 1 rejected-permanent, 2 rejected-transient.
    pub result: u8,
    /// Diagnostic.
    pub diagnostic: Diagnostic,
    /// The InitiateResponse, when present.
    pub initiate: Option<InitiateResponse>,
    /// A ConfirmedServiceError in the user information, when present.
    pub service_error: Option<ConfirmedServiceError>,
}

impl Aare {
    /// An accepting AARE (for simulators).
    pub fn accepted(conformance: Conformance, max_pdu: u16) -> Self {
        Aare {
            application_context: ApplicationContext::LnNoCipher,
            result: 0,
            diagnostic: Diagnostic { source: DiagnosticSource::User, value: 0 },
            initiate: Some(InitiateResponse { dlms_version: 6, conformance, max_pdu, vaa_name: 7 }),
            service_error: None,
        }
    }

    /// A rejecting AARE (for simulators).
    pub fn rejected(diagnostic: u8) -> Self {
        Aare {
            application_context: ApplicationContext::LnNoCipher,
            result: 1,
            diagnostic: Diagnostic { source: DiagnosticSource::User, value: diagnostic },
            initiate: None,
            service_error: None,
        }
    }

    /// Whether the association was accepted.
    pub fn accepted_ok(&self) -> bool {
        self.result == 0
    }

    /// Name of the association result.
    pub fn result_name(&self) -> &'static str {
        match self.result {
            0 => "accepted",
            1 => "rejected-permanent",
            2 => "rejected-transient",
            _ => "unknown",
        }
    }
}

/// RLRQ / RLRE: an optional reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Release {
    /// 0 normal, 1 urgent, 30 user-defined.
    pub reason: Option<u8>,
}

/// Name of a release reason.
pub fn release_reason_name(reason: u8) -> &'static str {
    match reason {
        0 => "normal",
        1 => "urgent",
        30 => "user-defined",
        _ => "unknown",
    }
}

/// GET.request.
#[derive(Debug, Clone, PartialEq)]
pub enum GetRequest {
    /// get-request-normal.
    Normal {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// What to read.
        attribute: AttributeDescriptor,
        /// Selective access.
        access: Option<SelectiveAccess>,
    },
    /// get-request-next (block transfer).
    Next {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Block number received last.
        block: u32,
    },
    /// get-request-with-list.
    WithList {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// What to read.
        attributes: Vec<(AttributeDescriptor, Option<SelectiveAccess>)>,
    },
}

/// GET.response.
#[derive(Debug, Clone, PartialEq)]
pub enum GetResponse {
    /// get-response-normal.
    Normal {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Data or error.
        result: GetDataResult,
    },
    /// get-response-with-datablock.
    WithDataBlock {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Last block.
        last: bool,
        /// Block number.
        block: u32,
        /// Raw data bytes of this block, or an error.
        raw: Result<Vec<u8>, DataAccessResult>,
    },
    /// get-response-with-list.
    WithList {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// One result per requested attribute.
        results: Vec<GetDataResult>,
    },
}

impl GetResponse {
    /// The invoke id and priority.
    pub fn iip(&self) -> InvokeIdAndPriority {
        match self {
            GetResponse::Normal { iip, .. }
            | GetResponse::WithDataBlock { iip, .. }
            | GetResponse::WithList { iip, .. } => *iip,
        }
    }
}

/// SET.request (normal and with-list; the gateway never sends block transfers).
#[derive(Debug, Clone, PartialEq)]
pub enum SetRequest {
    /// set-request-normal.
    Normal {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// What to write.
        attribute: AttributeDescriptor,
        /// Selective access.
        access: Option<SelectiveAccess>,
        /// The value.
        value: Data,
    },
    /// set-request-with-list.
    WithList {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Attributes and values.
        items: Vec<(AttributeDescriptor, Data)>,
    },
}

/// SET.response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetResponse {
    /// set-response-normal.
    Normal {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Result.
        result: DataAccessResult,
    },
    /// set-response-datablock.
    DataBlock {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Block number.
        block: u32,
    },
    /// set-response-last-datablock.
    LastDataBlock {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Result.
        result: DataAccessResult,
        /// Block number.
        block: u32,
    },
    /// set-response-with-list.
    WithList {
        /// Invoke id and priority.
        iip: InvokeIdAndPriority,
        /// Results.
        results: Vec<DataAccessResult>,
    },
}

impl SetResponse {
    /// The invoke id and priority.
    pub fn iip(&self) -> InvokeIdAndPriority {
        match self {
            SetResponse::Normal { iip, .. }
            | SetResponse::DataBlock { iip, .. }
            | SetResponse::LastDataBlock { iip, .. }
            | SetResponse::WithList { iip, .. } => *iip,
        }
    }
}

/// ACTION.request (normal).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// Invoke id and priority.
    pub iip: InvokeIdAndPriority,
    /// The method.
    pub method: MethodDescriptor,
    /// Parameters (`None` sends the `00` "no parameters" form).
    pub parameters: Option<Data>,
}

/// ACTION.response (normal).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionResponse {
    /// Invoke id and priority.
    pub iip: InvokeIdAndPriority,
    /// Action result.
    pub result: u8,
    /// Return parameters.
    pub return_parameters: Option<GetDataResult>,
    /// True when the optional-parameters presence byte was missing (accepted leniently, never emitted).
    pub presence_byte_missing: bool,
}

/// Which EventNotification layout was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventForm {
    /// The standard layout (time presence byte first).
    Standard,
    /// The EM114070/original layout (no time presence byte).
    Em114070,
}

/// EventNotification.
#[derive(Debug, Clone, PartialEq)]
pub struct EventNotification {
    /// Time, when present.
    pub time: Option<CosemDateTime>,
    /// The attribute that changed.
    pub attribute: AttributeDescriptor,
    /// Its value.
    pub value: Data,
    /// Layout found.
    pub form: EventForm,
}

/// DataNotification.
#[derive(Debug, Clone, PartialEq)]
pub struct DataNotification {
    /// long-invoke-id-and-priority.
    pub long_invoke_id: u32,
    /// Date-time, when present (a 12-byte octet string).
    pub date_time: Option<CosemDateTime>,
    /// The notification body.
    pub body: Data,
}

/// ExceptionResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExceptionResponse {
    /// State error.
    pub state_error: u8,
    /// Service error.
    pub service_error: u8,
    /// Invocation counter (when service error is 6).
    pub invocation_counter: Option<u32>,
}

impl ExceptionResponse {
    /// State error name.
    pub fn state_error_name(&self) -> &'static str {
        match self.state_error {
            1 => "service-not-allowed",
            2 => "service-unknown",
            _ => "unknown",
        }
    }
    /// Service error name.
    pub fn service_error_name(&self) -> &'static str {
        match self.service_error {
            1 => "operation-not-possible",
            2 => "service-not-supported",
            3 => "other-reason",
            4 => "pdu-too-long",
            5 => "deciphering-error",
            6 => "invocation-counter-error",
            _ => "unknown",
        }
    }
}

/// ConfirmedServiceError: which service, which error group, which value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfirmedServiceError {
    /// The service (1 initiate, 5 read, 6 write, ...).
    pub service: u8,
    /// ServiceError choice (0 application-reference, 1 hardware-resource, ..., 6 initiate, ...).
    pub error_type: u8,
    /// The value within that group.
    pub value: u8,
}

/// Any APDU.
#[derive(Debug, Clone, PartialEq)]
pub enum Apdu {
    /// AARQ.
    Aarq(Aarq),
    /// AARE.
    Aare(Aare),
    /// RLRQ.
    Rlrq(Release),
    /// RLRE.
    Rlre(Release),
    /// GET.request.
    GetRequest(GetRequest),
    /// GET.response.
    GetResponse(GetResponse),
    /// SET.request.
    SetRequest(SetRequest),
    /// SET.response.
    SetResponse(SetResponse),
    /// ACTION.request.
    ActionRequest(ActionRequest),
    /// ACTION.response.
    ActionResponse(ActionResponse),
    /// EventNotification.
    EventNotification(EventNotification),
    /// DataNotification.
    DataNotification(DataNotification),
    /// ExceptionResponse.
    ExceptionResponse(ExceptionResponse),
    /// ConfirmedServiceError.
    ConfirmedServiceError(ConfirmedServiceError),
}

// ---------------------------------------------------------------- reading

struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Cur<'a> {
    fn err(&self, kind: ApduErrorKind, msg: impl Into<String>) -> ApduError {
        ApduError::new(kind, self.tag, msg)
    }
    fn truncated(&self) -> ApduError {
        self.err(ApduErrorKind::Truncated, format!("ends after {} bytes", self.buf.len()))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ApduError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ApduError> {
        self.take(1)?.first().copied().ok_or_else(|| self.truncated())
    }
    fn u16(&mut self) -> Result<u16, ApduError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)]))
    }
    fn u32(&mut self) -> Result<u32, ApduError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_be_bytes(a))
    }
    fn length(&mut self) -> Result<usize, ApduError> {
        let (len, used) = decode_length(self.buf.get(self.pos..).unwrap_or_default()).map_err(|e| self.data_err(e))?;
        self.pos += used;
        Ok(len)
    }
    fn data_err(&self, e: AxdrError) -> ApduError {
        match e {
            AxdrError::Truncated => self.truncated(),
            other => self.err(ApduErrorKind::Data(other), other.to_string()),
        }
    }
    fn data(&mut self) -> Result<Data, ApduError> {
        let (d, used) = Data::decode(self.buf.get(self.pos..).unwrap_or_default()).map_err(|e| self.data_err(e))?;
        self.pos += used;
        Ok(d)
    }
    fn obis(&mut self) -> Result<Obis, ApduError> {
        let b = self.take(6)?;
        Obis::from_slice(b).ok_or_else(|| self.truncated())
    }
    fn attribute(&mut self) -> Result<AttributeDescriptor, ApduError> {
        Ok(AttributeDescriptor { class_id: self.u16()?, obis: self.obis()?, attribute: self.u8()? })
    }
    fn access(&mut self) -> Result<Option<SelectiveAccess>, ApduError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(SelectiveAccess { selector: self.u8()?, parameters: self.data()? })),
            other => Err(self.err(ApduErrorKind::InvalidChoice, format!("access-selection presence byte {other}"))),
        }
    }
    fn get_data_result(&mut self) -> Result<GetDataResult, ApduError> {
        match self.u8()? {
            0 => Ok(Ok(self.data()?)),
            1 => Ok(Err(DataAccessResult(self.u8()?))),
            other => Err(self.err(
                ApduErrorKind::InvalidChoice,
                format!("invalid Get-Data-Result choice {other} (must be 0 data or 1 data-access-result)"),
            )),
        }
    }
    fn iip(&mut self) -> Result<InvokeIdAndPriority, ApduError> {
        Ok(InvokeIdAndPriority(self.u8()?))
    }
    fn count(&mut self) -> Result<usize, ApduError> {
        let n = self.length()?;
        // Every element takes at least one byte: a count beyond the rest is a truncation, not an allocation.
        if n > self.buf.len().saturating_sub(self.pos) {
            return Err(self.truncated());
        }
        Ok(n)
    }
}

/// Parses the ACSE TLV at the start: returns the contents and the total length; reports truncation with the
/// declared and actual lengths.
fn ber_contents(buf: &[u8]) -> Result<(&[u8], usize), ApduError> {
    let tag = buf.first().copied().unwrap_or(0);
    let mut c = Cur { buf, pos: 1, tag };
    let declared = c.length()?;
    let available = buf.len().saturating_sub(c.pos);
    match buf.get(c.pos..c.pos + declared) {
        Some(contents) => Ok((contents, c.pos + declared)),
        None => {
            let mut e = ApduError::new(
                ApduErrorKind::Truncated,
                tag,
                format!("BER length {declared} exceeds the {available} bytes present"),
            );
            e.declared_length = Some(declared);
            e.actual_body_length = Some(available);
            Err(e)
        }
    }
}

/// Iterates the TLVs of ACSE contents: (tag, value).
fn tlvs(contents: &[u8], apdu_tag: u8) -> Result<Vec<(u8, &[u8])>, ApduError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < contents.len() {
        let rest = contents.get(pos..).unwrap_or_default();
        let (value, used) = ber_contents(rest).map_err(|mut e| {
            e.tag = apdu_tag;
            e.apdu = apdu_name(apdu_tag);
            e
        })?;
        out.push((rest.first().copied().unwrap_or(0), value));
        pos += used;
    }
    Ok(out)
}

fn malformed(tag: u8, msg: impl Into<String>) -> ApduError {
    ApduError::new(ApduErrorKind::Malformed, tag, msg)
}

/// The single INTEGER inside `[n] { INTEGER }` (or a plain small INTEGER value).
fn inner_integer(value: &[u8], tag: u8) -> Result<u8, ApduError> {
    match value {
        [0x02, 0x01, v] => Ok(*v),
        [v] => Ok(*v),
        _ => Err(malformed(tag, "expected an INTEGER")),
    }
}

fn parse_aarq(buf: &[u8]) -> Result<(Aarq, usize), ApduError> {
    let (contents, total) = ber_contents(buf)?;
    let mut aarq = Aarq { conformance: Conformance(0), max_pdu: 0, ..Aarq::default() };
    let mut initiate_seen = false;
    for (t, v) in tlvs(contents, 0x60)? {
        match t {
            0xA1 => match v {
                [0x06, _, oid @ ..] => aarq.application_context = ApplicationContext::from_oid(oid),
                _ => return Err(malformed(0x60, "application-context-name is not an OID")),
            },
            0x8B => aarq.mechanism = Some(v.to_vec()),
            0xAC => match v {
                [0x80, _, pw @ ..] => aarq.calling_authentication = Some(pw.to_vec()),
                _ => return Err(malformed(0x60, "calling-authentication-value is not a GraphicString")),
            },
            0xBE => {
                let [0x04, _, 0x01, rest @ ..] = v else {
                    return Err(malformed(0x60, "user-information is not an xDLMS InitiateRequest"));
                };
                // dedicated-key, response-allowed, proposed-quality-of-service: optional fields.
                let mut c = Cur { buf: rest, pos: 0, tag: 0x60 };
                // dedicated-key (octet string), response-allowed (boolean), proposed-quality-of-service (integer):
                // each a presence byte, then the value when present.
                if c.u8()? != 0 {
                    let n = c.length()?;
                    c.take(n)?;
                }
                for _ in 0..2 {
                    if c.u8()? != 0 {
                        c.u8()?;
                    }
                }
                aarq.dlms_version = c.u8()?;
                if c.take(3)? != [0x5F, 0x1F, 0x04] {
                    return Err(malformed(0x60, "conformance block tag missing"));
                }
                c.u8()?;
                let b = c.take(3)?;
                aarq.conformance = Conformance(b.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x)));
                aarq.max_pdu = c.u16()?;
                initiate_seen = true;
            }
            _ => {}
        }
    }
    if !initiate_seen {
        return Err(malformed(0x60, "no InitiateRequest in user-information"));
    }
    Ok((aarq, total))
}

fn parse_aare(buf: &[u8]) -> Result<(Aare, usize), ApduError> {
    let (contents, total) = ber_contents(buf)?;
    let mut context = None;
    let mut result = None;
    let mut diagnostic = None;
    let mut initiate = None;
    let mut service_error = None;
    for (t, v) in tlvs(contents, 0x61)? {
        match t {
            0xA1 => match v {
                [0x06, _, oid @ ..] => context = Some(ApplicationContext::from_oid(oid)),
                _ => return Err(malformed(0x61, "application-context-name is not an OID")),
            },
            0xA2 => result = Some(inner_integer(v, 0x61)?),
            0xA3 => {
                let source = match v.first() {
                    Some(0xA1) => DiagnosticSource::User,
                    Some(0xA2) => DiagnosticSource::Provider,
                    _ => return Err(malformed(0x61, "result-source-diagnostic choice")),
                };
                let value = inner_integer(v.get(2..).unwrap_or_default(), 0x61)?;
                diagnostic = Some(Diagnostic { source, value });
            }
            0xBE => match v {
                [0x04, _, 0x08, rest @ ..] => {
                    let mut c = Cur { buf: rest, pos: 0, tag: 0x61 };
                    if c.u8()? != 0 {
                        c.u8()?; // negotiated quality of service
                    }
                    let dlms_version = c.u8()?;
                    if c.take(3)? != [0x5F, 0x1F, 0x04] {
                        return Err(malformed(0x61, "conformance block tag missing"));
                    }
                    c.u8()?;
                    let b = c.take(3)?;
                    let conformance = Conformance(b.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x)));
                    let max_pdu = c.u16()?;
                    let vaa_name = c.u16()?;
                    initiate = Some(InitiateResponse { dlms_version, conformance, max_pdu, vaa_name });
                }
                [0x04, _, 0x0E, service, error_type, value, ..] => {
                    service_error =
                        Some(ConfirmedServiceError { service: *service, error_type: *error_type, value: *value });
                }
                _ => return Err(malformed(0x61, "user-information is not an InitiateResponse")),
            },
            _ => {}
        }
    }
    let application_context = context.ok_or_else(|| malformed(0x61, "mandatory application-context-name missing"))?;
    let result = result.ok_or_else(|| malformed(0x61, "mandatory result missing"))?;
    let diagnostic = diagnostic.ok_or_else(|| malformed(0x61, "mandatory result-source-diagnostic missing"))?;
    Ok((Aare { application_context, result, diagnostic, initiate, service_error }, total))
}

fn parse_release(buf: &[u8]) -> Result<(Release, usize), ApduError> {
    let tag = buf.first().copied().unwrap_or(0);
    let (contents, total) = ber_contents(buf)?;
    let mut reason = None;
    for (t, v) in tlvs(contents, tag)? {
        if t == 0x80 {
            reason = v.first().copied();
        }
    }
    Ok((Release { reason }, total))
}

fn parse_get_request(c: &mut Cur<'_>) -> Result<GetRequest, ApduError> {
    let kind = c.u8()?;
    let iip = c.iip()?;
    Ok(match kind {
        1 => GetRequest::Normal { iip, attribute: c.attribute()?, access: c.access()? },
        2 => GetRequest::Next { iip, block: c.u32()? },
        3 => {
            let n = c.count()?;
            let mut attributes = Vec::with_capacity(n);
            for _ in 0..n {
                attributes.push((c.attribute()?, c.access()?));
            }
            GetRequest::WithList { iip, attributes }
        }
        other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("GET.request type {other}"))),
    })
}

fn parse_get_response(c: &mut Cur<'_>) -> Result<GetResponse, ApduError> {
    let kind = c.u8()?;
    let iip = c.iip()?;
    Ok(match kind {
        1 => GetResponse::Normal { iip, result: c.get_data_result()? },
        2 => {
            let last = c.u8()? != 0;
            let block = c.u32()?;
            let raw = match c.u8()? {
                0 => {
                    let n = c.length()?;
                    Ok(c.take(n)?.to_vec())
                }
                1 => Err(DataAccessResult(c.u8()?)),
                other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("raw-data choice {other}"))),
            };
            GetResponse::WithDataBlock { iip, last, block, raw }
        }
        3 => {
            let n = c.count()?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                results.push(c.get_data_result()?);
            }
            GetResponse::WithList { iip, results }
        }
        other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("GET.response type {other}"))),
    })
}

fn parse_set_request(c: &mut Cur<'_>) -> Result<SetRequest, ApduError> {
    let kind = c.u8()?;
    let iip = c.iip()?;
    Ok(match kind {
        1 => SetRequest::Normal { iip, attribute: c.attribute()?, access: c.access()?, value: c.data()? },
        4 => {
            let n = c.count()?;
            let mut attrs = Vec::with_capacity(n);
            for _ in 0..n {
                let a = c.attribute()?;
                c.access()?;
                attrs.push(a);
            }
            let m = c.count()?;
            if m != n {
                return Err(c.err(ApduErrorKind::Malformed, "SET-with-list: value count differs from attribute count"));
            }
            let mut items = Vec::with_capacity(n);
            for a in attrs {
                items.push((a, c.data()?));
            }
            SetRequest::WithList { iip, items }
        }
        other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("SET.request type {other} not supported"))),
    })
}

fn parse_set_response(c: &mut Cur<'_>) -> Result<SetResponse, ApduError> {
    let kind = c.u8()?;
    let iip = c.iip()?;
    Ok(match kind {
        1 => SetResponse::Normal { iip, result: DataAccessResult(c.u8()?) },
        2 => SetResponse::DataBlock { iip, block: c.u32()? },
        3 => SetResponse::LastDataBlock { iip, result: DataAccessResult(c.u8()?), block: c.u32()? },
        5 => {
            let n = c.count()?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                results.push(DataAccessResult(c.u8()?));
            }
            SetResponse::WithList { iip, results }
        }
        other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("SET.response type {other} not supported"))),
    })
}

fn parse_action_request(c: &mut Cur<'_>) -> Result<ActionRequest, ApduError> {
    let kind = c.u8()?;
    if kind != 1 {
        return Err(c.err(ApduErrorKind::InvalidChoice, format!("ACTION.request type {kind} not supported")));
    }
    let iip = c.iip()?;
    let method = MethodDescriptor { class_id: c.u16()?, obis: c.obis()?, method: c.u8()? };
    let parameters = match c.u8()? {
        0 => None,
        1 => Some(c.data()?),
        other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("parameters presence byte {other}"))),
    };
    Ok(ActionRequest { iip, method, parameters })
}

fn parse_action_response(c: &mut Cur<'_>) -> Result<ActionResponse, ApduError> {
    let kind = c.u8()?;
    if kind != 1 {
        return Err(c.err(ApduErrorKind::InvalidChoice, format!("ACTION.response type {kind} not supported")));
    }
    let iip = c.iip()?;
    let result = c.u8()?;
    let annotate = |mut e: ApduError| {
        e.invoke_id_and_priority = Some(iip.0);
        e.result = Some(result);
        e
    };
    // Some meters omit the OPTIONAL presence byte when there is nothing to return: accepted, never emitted.
    if c.pos == c.buf.len() {
        return Ok(ActionResponse { iip, result, return_parameters: None, presence_byte_missing: true });
    }
    let return_parameters = match c.u8().map_err(annotate)? {
        0 => None,
        1 => Some(c.get_data_result().map_err(annotate)?),
        other => {
            return Err(annotate(
                c.err(ApduErrorKind::InvalidChoice, format!("return-parameters presence byte {other}")),
            ));
        }
    };
    Ok(ActionResponse { iip, result, return_parameters, presence_byte_missing: false })
}

fn parse_event_form(buf: &[u8], form: EventForm) -> Result<(EventNotification, usize), ApduError> {
    let mut c = Cur { buf, pos: 1, tag: 0xC2 };
    let time = match form {
        EventForm::Standard => match c.u8()? {
            0 => None,
            1 => {
                let n = c.length()?;
                let b = c.take(n)?;
                Some(
                    CosemDateTime::from_slice(b)
                        .ok_or_else(|| c.err(ApduErrorKind::Malformed, "time is not 12 bytes"))?,
                )
            }
            other => return Err(c.err(ApduErrorKind::InvalidChoice, format!("time presence byte {other}"))),
        },
        EventForm::Em114070 => None,
    };
    let attribute = c.attribute()?;
    let value = c.data()?;
    Ok((EventNotification { time, attribute, value, form }, c.pos))
}

/// Both layouts are tried; one that uses every byte wins (standard first), else the one leaving fewer trailing
/// bytes (standard on a tie).
fn parse_event_notification(buf: &[u8]) -> Result<(EventNotification, usize), ApduError> {
    let standard = parse_event_form(buf, EventForm::Standard);
    let em = parse_event_form(buf, EventForm::Em114070);
    match (standard, em) {
        (Ok(s), _) if s.1 == buf.len() => Ok(s),
        (_, Ok(e)) if e.1 == buf.len() => Ok(e),
        (Ok(s), Ok(e)) => Ok(if e.1 > s.1 { e } else { s }),
        (Ok(s), Err(_)) => Ok(s),
        (Err(_), Ok(e)) => Ok(e),
        (Err(s), Err(_)) => Err(s),
    }
}

fn parse_data_notification(c: &mut Cur<'_>) -> Result<DataNotification, ApduError> {
    let long_invoke_id = c.u32()?;
    let n = c.length()?;
    let date_time = match n {
        0 => None,
        12 => Some(CosemDateTime::from_slice(c.take(12)?).ok_or_else(|| c.truncated())?),
        other => return Err(c.err(ApduErrorKind::Malformed, format!("date-time of {other} bytes (0 or 12)"))),
    };
    Ok(DataNotification { long_invoke_id, date_time, body: c.data()? })
}

impl Apdu {
    /// Parses the APDU at the start of `buf`; returns it and the bytes it used (trailing bytes are the caller's
    /// business: a wrapper packet is exact, `explain` reports them).
    pub fn parse_prefix(buf: &[u8]) -> Result<(Apdu, usize), ApduError> {
        let Some(&tag) = buf.first() else {
            return Err(ApduError::new(ApduErrorKind::Truncated, 0, "empty"));
        };
        let mut c = Cur { buf, pos: 1, tag };
        let apdu = match tag {
            0x60 => return parse_aarq(buf).map(|(a, n)| (Apdu::Aarq(a), n)),
            0x61 => return parse_aare(buf).map(|(a, n)| (Apdu::Aare(a), n)),
            0x62 => return parse_release(buf).map(|(a, n)| (Apdu::Rlrq(a), n)),
            0x63 => return parse_release(buf).map(|(a, n)| (Apdu::Rlre(a), n)),
            0xC2 => return parse_event_notification(buf).map(|(a, n)| (Apdu::EventNotification(a), n)),
            0xC0 => Apdu::GetRequest(parse_get_request(&mut c)?),
            0xC1 => Apdu::SetRequest(parse_set_request(&mut c)?),
            0xC3 => Apdu::ActionRequest(parse_action_request(&mut c)?),
            0xC4 => Apdu::GetResponse(parse_get_response(&mut c)?),
            0xC5 => Apdu::SetResponse(parse_set_response(&mut c)?),
            0xC7 => Apdu::ActionResponse(parse_action_response(&mut c)?),
            0xD8 => {
                let state_error = c.u8()?;
                let service_error = c.u8()?;
                let invocation_counter = if service_error == 6 { Some(c.u32()?) } else { None };
                Apdu::ExceptionResponse(ExceptionResponse { state_error, service_error, invocation_counter })
            }
            0x0E => Apdu::ConfirmedServiceError(ConfirmedServiceError {
                service: c.u8()?,
                error_type: c.u8()?,
                value: c.u8()?,
            }),
            0x0F => Apdu::DataNotification(parse_data_notification(&mut c)?),
            other => {
                return Err(ApduError::new(
                    ApduErrorKind::UnknownApdu,
                    other,
                    format!("unknown APDU tag {other:#04x}"),
                ));
            }
        };
        Ok((apdu, c.pos))
    }

    /// Parses an APDU that must fill `buf` exactly.
    pub fn parse(buf: &[u8]) -> Result<Apdu, ApduError> {
        let (apdu, used) = Apdu::parse_prefix(buf)?;
        if used != buf.len() {
            let tag = buf.first().copied().unwrap_or(0);
            return Err(malformed(tag, format!("{} trailing bytes", buf.len() - used)));
        }
        Ok(apdu)
    }

    /// The APDU tag.
    pub fn tag(&self) -> u8 {
        match self {
            Apdu::Aarq(_) => 0x60,
            Apdu::Aare(_) => 0x61,
            Apdu::Rlrq(_) => 0x62,
            Apdu::Rlre(_) => 0x63,
            Apdu::GetRequest(_) => 0xC0,
            Apdu::SetRequest(_) => 0xC1,
            Apdu::EventNotification(_) => 0xC2,
            Apdu::ActionRequest(_) => 0xC3,
            Apdu::GetResponse(_) => 0xC4,
            Apdu::SetResponse(_) => 0xC5,
            Apdu::ActionResponse(_) => 0xC7,
            Apdu::ExceptionResponse(_) => 0xD8,
            Apdu::ConfirmedServiceError(_) => 0x0E,
            Apdu::DataNotification(_) => 0x0F,
        }
    }

    /// The APDU's name.
    pub fn name(&self) -> &'static str {
        apdu_name(self.tag())
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.push(self.tag());
        match self {
            Apdu::Aarq(a) => return encode_aarq(a),
            Apdu::Aare(a) => return encode_aare(a),
            Apdu::Rlrq(r) | Apdu::Rlre(r) => match r.reason {
                Some(reason) => out.extend_from_slice(&[0x03, 0x80, 0x01, reason]),
                None => out.push(0x00),
            },
            Apdu::GetRequest(g) => match g {
                GetRequest::Normal { iip, attribute, access } => {
                    out.extend_from_slice(&[1, iip.0]);
                    put_attribute(&mut out, attribute);
                    put_access(&mut out, access.as_ref());
                }
                GetRequest::Next { iip, block } => {
                    out.extend_from_slice(&[2, iip.0]);
                    out.extend_from_slice(&block.to_be_bytes());
                }
                GetRequest::WithList { iip, attributes } => {
                    out.extend_from_slice(&[3, iip.0]);
                    encode_length(attributes.len(), &mut out);
                    for (a, access) in attributes {
                        put_attribute(&mut out, a);
                        put_access(&mut out, access.as_ref());
                    }
                }
            },
            Apdu::GetResponse(g) => match g {
                GetResponse::Normal { iip, result } => {
                    out.extend_from_slice(&[1, iip.0]);
                    put_get_data_result(&mut out, result);
                }
                GetResponse::WithDataBlock { iip, last, block, raw } => {
                    out.extend_from_slice(&[2, iip.0, u8::from(*last)]);
                    out.extend_from_slice(&block.to_be_bytes());
                    match raw {
                        Ok(bytes) => {
                            out.push(0);
                            encode_length(bytes.len(), &mut out);
                            out.extend_from_slice(bytes);
                        }
                        Err(dar) => out.extend_from_slice(&[1, dar.0]),
                    }
                }
                GetResponse::WithList { iip, results } => {
                    out.extend_from_slice(&[3, iip.0]);
                    encode_length(results.len(), &mut out);
                    for r in results {
                        put_get_data_result(&mut out, r);
                    }
                }
            },
            Apdu::SetRequest(s) => match s {
                SetRequest::Normal { iip, attribute, access, value } => {
                    out.extend_from_slice(&[1, iip.0]);
                    put_attribute(&mut out, attribute);
                    put_access(&mut out, access.as_ref());
                    value.encode(&mut out);
                }
                SetRequest::WithList { iip, items } => {
                    out.extend_from_slice(&[4, iip.0]);
                    encode_length(items.len(), &mut out);
                    for (a, _) in items {
                        put_attribute(&mut out, a);
                        out.push(0);
                    }
                    encode_length(items.len(), &mut out);
                    for (_, v) in items {
                        v.encode(&mut out);
                    }
                }
            },
            Apdu::SetResponse(s) => match s {
                SetResponse::Normal { iip, result } => out.extend_from_slice(&[1, iip.0, result.0]),
                SetResponse::DataBlock { iip, block } => {
                    out.extend_from_slice(&[2, iip.0]);
                    out.extend_from_slice(&block.to_be_bytes());
                }
                SetResponse::LastDataBlock { iip, result, block } => {
                    out.extend_from_slice(&[3, iip.0, result.0]);
                    out.extend_from_slice(&block.to_be_bytes());
                }
                SetResponse::WithList { iip, results } => {
                    out.extend_from_slice(&[5, iip.0]);
                    encode_length(results.len(), &mut out);
                    out.extend(results.iter().map(|r| r.0));
                }
            },
            Apdu::ActionRequest(a) => {
                out.extend_from_slice(&[1, a.iip.0]);
                out.extend_from_slice(&a.method.class_id.to_be_bytes());
                out.extend_from_slice(&a.method.obis.bytes());
                out.push(a.method.method);
                match &a.parameters {
                    None => out.push(0),
                    Some(d) => {
                        out.push(1);
                        d.encode(&mut out);
                    }
                }
            }
            Apdu::ActionResponse(a) => {
                out.extend_from_slice(&[1, a.iip.0, a.result]);
                match &a.return_parameters {
                    None => out.push(0),
                    Some(r) => {
                        out.push(1);
                        put_get_data_result(&mut out, r);
                    }
                }
            }
            Apdu::EventNotification(e) => {
                if e.form == EventForm::Standard {
                    match &e.time {
                        None => out.push(0),
                        Some(t) => {
                            out.extend_from_slice(&[1, 12]);
                            out.extend_from_slice(&t.to_bytes());
                        }
                    }
                }
                put_attribute(&mut out, &e.attribute);
                e.value.encode(&mut out);
            }
            Apdu::DataNotification(d) => {
                out.extend_from_slice(&d.long_invoke_id.to_be_bytes());
                match &d.date_time {
                    None => out.push(0),
                    Some(t) => {
                        out.push(12);
                        out.extend_from_slice(&t.to_bytes());
                    }
                }
                d.body.encode(&mut out);
            }
            Apdu::ExceptionResponse(e) => {
                out.extend_from_slice(&[e.state_error, e.service_error]);
                if let Some(ic) = e.invocation_counter {
                    out.extend_from_slice(&ic.to_be_bytes());
                }
            }
            Apdu::ConfirmedServiceError(e) => out.extend_from_slice(&[e.service, e.error_type, e.value]),
        }
        out
    }
}

fn put_attribute(out: &mut Vec<u8>, a: &AttributeDescriptor) {
    out.extend_from_slice(&a.class_id.to_be_bytes());
    out.extend_from_slice(&a.obis.bytes());
    out.push(a.attribute);
}

fn put_access(out: &mut Vec<u8>, access: Option<&SelectiveAccess>) {
    match access {
        None => out.push(0),
        Some(a) => {
            out.extend_from_slice(&[1, a.selector]);
            a.parameters.encode(out);
        }
    }
}

fn put_get_data_result(out: &mut Vec<u8>, r: &GetDataResult) {
    match r {
        Ok(d) => {
            out.push(0);
            d.encode(out);
        }
        Err(dar) => out.extend_from_slice(&[1, dar.0]),
    }
}

fn tlv(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    encode_length(value.len(), out);
    out.extend_from_slice(value);
}

fn encode_aarq(a: &Aarq) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    let oid = a.application_context.oid();
    let mut ctx = Vec::new();
    tlv(0x06, &oid, &mut ctx);
    tlv(0xA1, &ctx, &mut body);
    if let Some(mechanism) = &a.mechanism {
        tlv(0x8A, &[0x07, 0x80], &mut body); // acse-requirements: authentication
        tlv(0x8B, mechanism, &mut body);
    }
    if let Some(pw) = &a.calling_authentication {
        let mut v = Vec::new();
        tlv(0x80, pw, &mut v);
        tlv(0xAC, &v, &mut body);
    }
    let mut initiate = vec![0x01, 0x00, 0x00, 0x00, a.dlms_version, 0x5F, 0x1F, 0x04, 0x00];
    initiate.extend_from_slice(&a.conformance.bytes());
    initiate.extend_from_slice(&a.max_pdu.to_be_bytes());
    let mut user = Vec::new();
    tlv(0x04, &initiate, &mut user);
    tlv(0xBE, &user, &mut body);
    let mut out = Vec::with_capacity(body.len() + 2);
    tlv(0x60, &body, &mut out);
    out
}

fn encode_aare(a: &Aare) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    let mut ctx = Vec::new();
    tlv(0x06, &a.application_context.oid(), &mut ctx);
    tlv(0xA1, &ctx, &mut body);
    tlv(0xA2, &[0x02, 0x01, a.result], &mut body);
    let choice = match a.diagnostic.source {
        DiagnosticSource::User => 0xA1,
        DiagnosticSource::Provider => 0xA2,
    };
    let mut diag = Vec::new();
    tlv(choice, &[0x02, 0x01, a.diagnostic.value], &mut diag);
    tlv(0xA3, &diag, &mut body);
    let user_info = match (&a.initiate, &a.service_error) {
        (Some(i), _) => {
            let mut v = vec![0x08, 0x00, i.dlms_version, 0x5F, 0x1F, 0x04, 0x00];
            v.extend_from_slice(&i.conformance.bytes());
            v.extend_from_slice(&i.max_pdu.to_be_bytes());
            v.extend_from_slice(&i.vaa_name.to_be_bytes());
            Some(v)
        }
        (None, Some(e)) => Some(vec![0x0E, e.service, e.error_type, e.value]),
        (None, None) => None,
    };
    if let Some(v) = user_info {
        let mut user = Vec::new();
        tlv(0x04, &v, &mut user);
        tlv(0xBE, &user, &mut body);
    }
    let mut out = Vec::with_capacity(body.len() + 2);
    tlv(0x61, &body, &mut out);
    out
}

// ---------------------------------------------------------------- convenience builders

/// GET.request-normal for one attribute.
pub fn get_request(iip: InvokeIdAndPriority, attribute: AttributeDescriptor) -> Vec<u8> {
    Apdu::GetRequest(GetRequest::Normal { iip, attribute, access: None }).encode()
}

/// ACTION.request-normal.
pub fn action_request(iip: InvokeIdAndPriority, method: MethodDescriptor, parameters: Option<Data>) -> Vec<u8> {
    Apdu::ActionRequest(ActionRequest { iip, method, parameters }).encode()
}

/// RLRQ with reason normal: `62 03 80 01 00`.
pub fn release_request() -> Vec<u8> {
    Apdu::Rlrq(Release { reason: Some(0) }).encode()
}

/// Name of a disconnect-control method (class 70).
pub fn disconnect_method_name(method: u8) -> &'static str {
    match method {
        1 => "remote_disconnect",
        2 => "remote_reconnect",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_aarq_is_exactly_what_the_em114070_accepts() {
        assert_eq!(
            hex::encode(Apdu::Aarq(Aarq::default()).encode()),
            "601da109060760857405080101be10040e01000000065f1f0400001e1dffff"
        );
        let lls = Apdu::Aarq(Aarq::default().with_lls(b"12345678")).encode();
        let back = Apdu::parse(&lls).unwrap();
        assert!(matches!(back, Apdu::Aarq(a) if a.calling_authentication.as_deref() == Some(&b"12345678"[..])));
    }

    #[test]
    fn aare_round_trip() {
        let a = Aare::accepted(Conformance::DEFAULT, 500);
        let bytes = Apdu::Aare(a.clone()).encode();
        assert_eq!(
            hex::encode(&bytes),
            "6129a109060760857405080101a203020100a305a103020100be10040e0800065f1f0400001e1d01f40007"
        );
        assert_eq!(Apdu::parse(&bytes).unwrap(), Apdu::Aare(a));
        let r = Aare::rejected(2);
        assert_eq!(Apdu::parse(&Apdu::Aare(r.clone()).encode()).unwrap(), Apdu::Aare(r));
    }

    #[test]
    fn conformance_names() {
        assert_eq!(
            Conformance::DEFAULT.names(),
            vec![
                "block-transfer-with-get-or-read",
                "block-transfer-with-set-or-write",
                "block-transfer-with-action",
                "multiple-references",
                "get",
                "set",
                "selective-access",
                "action"
            ]
        );
        assert!(Conformance::DEFAULT.multiple_references());
    }
}
