//! Realistic, changing values: voltage around its base with noise, monotonic energy, load-following current and
//! power, power factor and frequency near their nominal values. Deterministic for a given (register, tick, seed).

/// A cheap deterministic hash → [0, 1).
fn unit(seed: u64) -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The daily load shape at `tick` (0.2 .. 1.0).
fn load(tick: u64, seed: u8) -> f64 {
    let phase = (tick as f64 / 60.0) + f64::from(seed) / 40.0;
    0.6 + 0.4 * phase.sin() * 0.9 + 0.05 * unit(tick ^ u64::from(seed))
}

/// The value of DL/T 645 register `di` at `tick`, varying around `base`.
pub fn vary(di: u32, base: f64, tick: u64, seed: u8) -> f64 {
    let noise = unit((u64::from(di) << 16) ^ tick ^ (u64::from(seed) << 40)) - 0.5;
    match di >> 16 {
        // Energies: monotonic.
        0x0000..=0x0004 | 0x0090 => base + tick as f64 * 0.01,
        // Voltages: 220..240 V.
        0x0201 => (230.0 + noise * 20.0).clamp(220.0, 240.0),
        // Current and powers follow the load.
        0x0202..=0x0205 => base * load(tick, seed),
        // Power factor 0.85..1.0.
        0x0206 => (0.925 + noise * 0.15).clamp(-1.0, 1.0),
        // Frequency 49.95..50.05 Hz.
        0x0280 if di == 0x0280_0002 => 50.0 + noise * 0.1,
        _ => base,
    }
}

/// The raw integer of a DLMS register at `tick`, varying around `base` (same shapes as [`vary`]).
pub fn vary_dlms(key: &str, base: i64, tick: u64, seed: u8) -> i64 {
    let noise = unit(key.len() as u64 ^ tick ^ (u64::from(seed) << 40)) - 0.5;
    let f = base as f64;
    let v = if key.contains("ENERGY") {
        f + tick as f64 * 10.0
    } else if key.starts_with("VOLTAGE") {
        23_000.0 + noise * 2_000.0
    } else if key.starts_with("FREQUENCY") {
        5_000.0 + noise * 10.0
    } else if key.starts_with("POWER_FACTOR") {
        925.0 + noise * 150.0
    } else if key.starts_with("CURRENT") || key.contains("POWER") {
        f * load(tick, seed)
    } else {
        f
    };
    v.round() as i64
}
