//! Kubernetes quantities, parsed exactly.
//!
//! A quantity is `<sign><digits>[.<digits>][<suffix>]` where the suffix is a binary SI
//! (`Ki`…`Ei`), a decimal SI (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal
//! exponent (`e3`, `E-2`). The value is kept as an exact rational and rounded *up* to the unit
//! asked for, as Kubernetes does (`Quantity.MilliValue`, `Quantity.Value` round up), so
//! `"0.1m"` of CPU is one millicore and never zero.

use thiserror::Error;

/// A quantity string that is not a valid Kubernetes quantity, or does not fit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

/// Longest quantity string we accept; Kubernetes' own limit on significant digits is far lower.
const MAX_LEN: usize = 64;

/// Parsed form: `mantissa × 10^exp10 × 2^exp2`, mantissa non-negative.
struct Parsed {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn err(input: &str, reason: &'static str) -> QuantityError {
    QuantityError { input: input.to_owned(), reason }
}

fn parse(input: &str) -> Result<Parsed, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "empty"));
    }
    if s.len() > MAX_LEN {
        return Err(err(input, "too long"));
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => return Err(err(input, "must not be negative")),
        None => s,
    };
    let num_end = s.char_indices().find(|(_, c)| !(c.is_ascii_digit() || *c == '.')).map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err(input, "expected a number"));
    }
    if frac_part.contains('.') {
        return Err(err(input, "more than one decimal point"));
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(err(input, "too many significant digits"));
    }
    let mantissa: u128 =
        if digits.is_empty() { 0 } else { digits.parse().map_err(|_| err(input, "expected a number"))? };
    let mut exp10 = -(frac_part.len() as i32);
    let mut exp2 = 0u32;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        other if other.starts_with(['e', 'E']) => {
            let e: i32 = other[1..].parse().map_err(|_| err(input, "unknown suffix"))?;
            if !(-30..=30).contains(&e) {
                return Err(err(input, "exponent out of range"));
            }
            exp10 += e;
        }
        _ => {
            return Err(err(
                input,
                "unknown suffix (expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei or an exponent)",
            ));
        }
    }
    Ok(Parsed { mantissa, exp10, exp2 })
}

/// Value × 10^scale rounded up, as an `u64`.
fn scaled_ceil(input: &str, scale: i32) -> Result<u64, QuantityError> {
    let p = parse(input)?;
    let overflow = || err(input, "too large");
    let mut num: u128 = p.mantissa.checked_shl(p.exp2).filter(|v| v >> p.exp2 == p.mantissa).ok_or_else(overflow)?;
    let mut den: u128 = 1;
    let e = p.exp10 + scale;
    if e >= 0 {
        num = num.checked_mul(10u128.checked_pow(e as u32).ok_or_else(overflow)?).ok_or_else(overflow)?;
    } else {
        den = 10u128.checked_pow((-e) as u32).ok_or_else(overflow)?;
    }
    let v = num.div_ceil(den);
    u64::try_from(v).ok().filter(|v| *v <= i64::MAX as u64).ok_or_else(overflow)
}

/// CPU in millicores: `"100m"` → 100, `"1.5"` → 1500, `"2"` → 2000.
pub fn parse_cpu_millis(input: &str) -> Result<u64, QuantityError> {
    scaled_ceil(input, 3)
}

/// Memory (or any plain count) in base units: `"128Mi"` → 134217728, `"1G"` → 10^9.
pub fn parse_bytes(input: &str) -> Result<u64, QuantityError> {
    scaled_ceil(input, 0)
}

/// Canonical CPU string: whole cores when exact (`"2"`), millicores otherwise (`"1500m"`).
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{millis}m") }
}

/// Canonical memory string: the largest binary suffix that divides exactly (`"128Mi"`).
pub fn format_bytes(bytes: u64) -> String {
    const SUFFIXES: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, shift) in SUFFIXES {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_parse_to_millicores() {
        for (input, want) in [
            ("100m", 100),
            ("1", 1000),
            ("1.5", 1500),
            ("0.1", 100),
            ("2k", 2_000_000),
            ("250000u", 250),
            ("1e3", 1_000_000),
            ("+3", 3000),
            ("0", 0),
            (".5", 500),
            ("0.1m", 1), // rounds up, as Kubernetes does
            ("1n", 1),
        ] {
            assert_eq!(parse_cpu_millis(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn memory_quantities_parse_to_bytes() {
        for (input, want) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            ("64Gi", 64 << 30),
            ("100", 100),
            ("1Ki", 1024),
            ("0.5", 1),
            ("1E", 1_000_000_000_000_000_000),
        ] {
            assert_eq!(parse_bytes(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn malformed_quantities_are_rejected_with_a_reason() {
        for input in ["", "12x", "abc", "1..2", "-1", "1Gib", "Mi", ".", "1e", "1e99", "1.2.3", "99999999999Ei"] {
            let e = parse_bytes(input).expect_err(input);
            assert_eq!(e.input, input);
        }
    }

    #[test]
    fn formatting_round_trips() {
        for m in [0u64, 1, 100, 1000, 1500, 16000] {
            assert_eq!(parse_cpu_millis(&format_cpu_millis(m)), Ok(m));
        }
        for b in [0u64, 1, 1023, 1024, 128 << 20, 64 << 30, 3 << 29] {
            assert_eq!(parse_bytes(&format_bytes(b)), Ok(b));
        }
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_cpu_millis(1500), "1500m");
    }
}
