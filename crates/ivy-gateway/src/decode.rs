//! `ivy-gateway decode`: explain a frame, APDU or A-XDR value given as hex, for field debugging.

use ivy_protocol::explain::{self, Options, Protocol};
use std::io::Write;

/// Arguments of the `decode` subcommand.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Print one JSON object (vector field names) instead of words.
    #[arg(long)]
    pub json: bool,
    /// Force the interpretation: dlt645, dlms, wrapper, axdr, heartbeat, obis or cosem-datetime.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Skip this many bytes first (an A-XDR value inside a larger buffer).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// The bytes as hex; spaces, colons and a 0x prefix are allowed, several arguments are joined, `-` reads stdin.
    #[arg(required = true, num_args = 1..)]
    pub hex: Vec<String>,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

/// Why `decode` failed; printed as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is not hex.
    #[error("invalid hex input: {0}")]
    Hex(String),
    /// The bytes do not decode.
    #[error("{0}")]
    Explain(#[from] explain::ExplainError),
    /// Reading stdin failed.
    #[error("cannot read stdin: {0}")]
    Stdin(#[from] std::io::Error),
}

/// Turns the user's hex text into bytes.
pub fn parse_hex(parts: &[String]) -> Result<Vec<u8>, DecodeError> {
    let mut text = String::new();
    for part in parts {
        if part == "-" {
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        } else {
            text.push_str(part);
        }
        text.push(' ');
    }
    let mut cleaned = String::with_capacity(text.len());
    for token in text.split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == '-') {
        let token = token.strip_prefix("0x").or_else(|| token.strip_prefix("0X")).unwrap_or(token);
        cleaned.push_str(token);
    }
    if cleaned.is_empty() {
        return Err(DecodeError::Hex("no bytes given".into()));
    }
    hex::decode(&cleaned).map_err(|e| DecodeError::Hex(e.to_string()))
}

/// Runs the subcommand; returns the process exit code (0 success, 2 bad input).
pub fn run(args: &DecodeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let outcome = parse_hex(&args.hex).and_then(|bytes| {
        explain::explain(&bytes, Options { protocol: args.protocol, offset: args.offset }).map_err(DecodeError::from)
    });
    let written = match &outcome {
        Ok(explanation) if args.json => writeln!(out, "{}", explanation.to_json()),
        Ok(explanation) => writeln!(out, "{}", explanation.to_text()),
        Err(DecodeError::Explain(e)) if args.json => {
            writeln!(out, "{}", e.to_json()).and_then(|()| writeln!(err, "decode: {e}"))
        }
        Err(e) => writeln!(err, "decode: {e}"),
    };
    match (outcome, written) {
        (Ok(_), Ok(())) => 0,
        (Ok(_), Err(_)) => 1,
        (Err(_), _) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_forms() {
        let parts = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_hex(&parts(&["68 34", "0x12"])).unwrap(), vec![0x68, 0x34, 0x12]);
        assert_eq!(parse_hex(&parts(&["68:34:12"])).unwrap(), vec![0x68, 0x34, 0x12]);
        assert!(parse_hex(&parts(&["6"])).is_err());
        assert!(parse_hex(&parts(&["zz"])).is_err());
        assert!(parse_hex(&parts(&[" "])).is_err());
    }
}
