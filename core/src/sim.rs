//! Labels that steer the simulated cluster (DESIGN.md §7).

use std::time::Duration;

/// How long a simulated task runs, as a duration string (`"2s"`, `"500ms"`, `"1m"`).
pub const DURATION_LABEL: &str = "berth.io/sim-duration";
/// The exit code a simulated task ends with (`"0"` succeeds, anything else fails).
pub const EXIT_CODE_LABEL: &str = "berth.io/sim-exit-code";

/// The longest simulated run we accept: a day, so a typo cannot park capacity for years.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a sim-duration label value.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{value:?} is not a duration such as \"2s\" or \"500ms\": {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{value:?} is longer than the simulated cluster's limit of 24h"));
    }
    Ok(d)
}

/// Parses a sim-exit-code label value (0–255).
pub fn parse_exit_code(value: &str) -> Result<i32, String> {
    value.trim().parse::<u8>().map(i32::from).map_err(|_| format!("{value:?} is not an exit code between 0 and 255"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_labels_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2d").is_err());
        assert_eq!(parse_exit_code("1"), Ok(1));
        assert!(parse_exit_code("-1").is_err());
        assert!(parse_exit_code("300").is_err());
    }
}
