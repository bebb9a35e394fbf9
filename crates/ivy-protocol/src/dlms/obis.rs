//! OBIS codes: six bytes `A-B:C.D.E.F`.

use std::fmt;

/// An OBIS code (the instance id of a COSEM object).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Obis(pub [u8; 6]);

/// Why text is not an OBIS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an OBIS code (expected A-B:C.D.E.F with values 0..=255, e.g. 1-0:12.7.0.255)")]
pub struct ObisError(pub String);

impl Obis {
    /// From the 6 bytes.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> Self {
        Obis([a, b, c, d, e, f])
    }

    /// From a 6-byte slice.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Obis)
    }

    /// The 6 bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Obis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a}-{b}:{c}.{d}.{e}.{g}")
    }
}

impl fmt::Debug for Obis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Obis({self})")
    }
}

impl std::str::FromStr for Obis {
    type Err = ObisError;

    /// Accepts `A-B:C.D.E.F`, `A-B:C.D.E` (F = 255) and `A.B.C.D.E.F`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ObisError(s.to_owned());
        let parts: Vec<&str> = s.trim().split(['-', ':', '.']).collect();
        let values: Vec<u8> = parts.iter().map(|p| p.parse::<u8>().map_err(|_| err())).collect::<Result<_, _>>()?;
        let dashed = s.contains('-') && s.contains(':');
        match (values.as_slice(), dashed) {
            ([a, b, c, d, e, f], _) => Ok(Obis([*a, *b, *c, *d, *e, *f])),
            ([a, b, c, d, e], true) => Ok(Obis([*a, *b, *c, *d, *e, 255])),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let o: Obis = "1-0:12.7.0.255".parse().unwrap();
        assert_eq!(o.bytes(), [1, 0, 12, 7, 0, 255]);
        assert_eq!(o.to_string(), "1-0:12.7.0.255");
        assert_eq!("1-0:12.7.0".parse::<Obis>().unwrap(), o);
        assert_eq!("1.0.12.7.0.255".parse::<Obis>().unwrap(), o);
        assert!("1-0:12.7".parse::<Obis>().is_err());
        assert!("1-0:12.7.0.256".parse::<Obis>().is_err());
        assert!("".parse::<Obis>().is_err());
    }
}
