//! The control byte: direction, abnormal reply, follow-up, and the function code.

/// Function codes (control & 0x1F).
pub mod function {
    /// Broadcast time.
    pub const BROADCAST_TIME: u8 = 0x08;
    /// Read data.
    pub const READ: u8 = 0x11;
    /// Read follow-up data.
    pub const READ_FOLLOW_UP: u8 = 0x12;
    /// Read communication address.
    pub const READ_ADDRESS: u8 = 0x13;
    /// Write data.
    pub const WRITE: u8 = 0x14;
    /// Write communication address.
    pub const WRITE_ADDRESS: u8 = 0x15;
    /// Freeze.
    pub const FREEZE: u8 = 0x16;
    /// Change baud rate.
    pub const CHANGE_BAUD_RATE: u8 = 0x17;
    /// Change password.
    pub const CHANGE_PASSWORD: u8 = 0x18;
    /// Clear maximum demand.
    pub const CLEAR_DEMAND: u8 = 0x19;
    /// Clear meter.
    pub const CLEAR_METER: u8 = 0x1A;
    /// Clear events.
    pub const CLEAR_EVENTS: u8 = 0x1B;
    /// Relay (trip/close) and alarm control.
    pub const RELAY_CONTROL: u8 = 0x1C;
}

/// The control byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Control(pub u8);

impl Control {
    /// A request (master → meter) for `function`.
    pub fn request(function: u8) -> Self {
        Control(function & 0x1F)
    }

    /// A normal reply (meter → master).
    pub fn reply(function: u8) -> Self {
        Control(0x80 | (function & 0x1F))
    }

    /// An abnormal (error) reply.
    pub fn error_reply(function: u8) -> Self {
        Control(0xC0 | (function & 0x1F))
    }

    /// Bit 7: the frame comes from the meter.
    pub fn from_meter(&self) -> bool {
        self.0 & 0x80 != 0
    }

    /// Bit 6: an error reply.
    pub fn abnormal(&self) -> bool {
        self.0 & 0x40 != 0
    }

    /// Bit 5: more frames follow.
    pub fn follow_up(&self) -> bool {
        self.0 & 0x20 != 0
    }

    /// Bits 4..0.
    pub fn function(&self) -> u8 {
        self.0 & 0x1F
    }

    /// The function's name (the vectors' `function_name`).
    pub fn function_name(&self) -> &'static str {
        function_name(self.function())
    }
}

/// Name of a function code.
pub fn function_name(code: u8) -> &'static str {
    match code {
        function::BROADCAST_TIME => "broadcast_time",
        function::READ => "read_data",
        function::READ_FOLLOW_UP => "read_follow_up",
        function::READ_ADDRESS => "read_address",
        function::WRITE => "write_data",
        function::WRITE_ADDRESS => "write_address",
        function::FREEZE => "freeze",
        function::CHANGE_BAUD_RATE => "change_baud_rate",
        function::CHANGE_PASSWORD => "change_password",
        function::CLEAR_DEMAND => "clear_max_demand",
        function::CLEAR_METER => "clear_meter",
        function::CLEAR_EVENTS => "clear_events",
        function::RELAY_CONTROL => "relay_control",
        _ => "unknown",
    }
}

/// The error byte of an abnormal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorFlags(pub u8);

/// Names of the error bits, bit 0 first (DL/T 645-2007 table: other, no requested data, password wrong or
/// unauthorised, baud rate cannot change, too many annual time zones, too many daily time slots, too many tariffs).
pub const ERROR_BIT_NAMES: [&str; 8] = [
    "other_error",
    "no_requested_data",
    "password_error_or_unauthorized",
    "baud_rate_not_changeable",
    "year_time_zone_count_exceeded",
    "daily_time_slot_count_exceeded",
    "tariff_count_exceeded",
    "reserved_bit_7",
];

impl ErrorFlags {
    /// The names of the bits that are set.
    pub fn names(&self) -> Vec<&'static str> {
        ERROR_BIT_NAMES.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| *n).collect()
    }
}

impl std::fmt::Display for ErrorFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.names();
        if names.is_empty() { write!(f, "error byte {:#04x}", self.0) } else { f.write_str(&names.join(", ")) }
    }
}
