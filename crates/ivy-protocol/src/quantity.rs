//! What a register measures. Shared by the DL/T 645 catalogue and the OBIS registry so that rules (alarms, units,
//! dashboards) select readings by quantity, never by a substring of a name.

/// A physical quantity or kind of register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quantity {
    /// Voltage.
    Voltage,
    /// Current.
    Current,
    /// Active power.
    ActivePower,
    /// Reactive power.
    ReactivePower,
    /// Apparent power.
    ApparentPower,
    /// Power factor.
    PowerFactor,
    /// Frequency.
    Frequency,
    /// Energy counter.
    Energy,
    /// Maximum demand.
    Demand,
    /// Temperature.
    Temperature,
    /// Money (prepaid balance).
    Money,
    /// Clock, date or time.
    Clock,
    /// Identity (address, serial number, logical device name).
    Identity,
    /// Active tariff.
    Tariff,
    /// Event counter.
    Counter,
    /// Status word / bit flags.
    Status,
    /// Control object (disconnector).
    Control,
    /// Anything else.
    Other,
}

impl Quantity {
    /// Every quantity.
    pub const ALL: [Quantity; 18] = [
        Quantity::Voltage,
        Quantity::Current,
        Quantity::ActivePower,
        Quantity::ReactivePower,
        Quantity::ApparentPower,
        Quantity::PowerFactor,
        Quantity::Frequency,
        Quantity::Energy,
        Quantity::Demand,
        Quantity::Temperature,
        Quantity::Money,
        Quantity::Clock,
        Quantity::Identity,
        Quantity::Tariff,
        Quantity::Counter,
        Quantity::Status,
        Quantity::Control,
        Quantity::Other,
    ];

    /// snake_case name (used in data files).
    pub fn as_str(&self) -> &'static str {
        match self {
            Quantity::Voltage => "voltage",
            Quantity::Current => "current",
            Quantity::ActivePower => "active_power",
            Quantity::ReactivePower => "reactive_power",
            Quantity::ApparentPower => "apparent_power",
            Quantity::PowerFactor => "power_factor",
            Quantity::Frequency => "frequency",
            Quantity::Energy => "energy",
            Quantity::Demand => "demand",
            Quantity::Temperature => "temperature",
            Quantity::Money => "money",
            Quantity::Clock => "clock",
            Quantity::Identity => "identity",
            Quantity::Tariff => "tariff",
            Quantity::Counter => "counter",
            Quantity::Status => "status",
            Quantity::Control => "control",
            Quantity::Other => "other",
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        Quantity::ALL.into_iter().find(|q| q.as_str() == s).ok_or_else(|| format!("unknown quantity '{s}'"))
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
