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

/// One statement of a script the simulated cluster can run.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `echo words…`: one line of output.
    Echo(String),
    /// `sleep <seconds>` (fractions allowed).
    Sleep(Duration),
    /// `exit <code>`: the script ends with that code.
    Exit(i32),
}

/// The script of a task whose command is `sh -c '<script>'` (the script as the third command
/// word or the first argument), when every statement is one the simulated cluster can run:
/// `echo`, `sleep` and `exit`, separated by `;`, `&&` or newlines. None otherwise: such a task
/// runs for its sim-duration label (or the default) instead.
///
/// This is what lets one task spec behave the same on the simulated cluster, on the
/// emulator's test kubelet and on a real cluster running busybox.
pub fn script(command: &[String], args: &[String]) -> Option<Vec<Step>> {
    let words: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
    let text = match words.as_slice() {
        ["sh" | "/bin/sh" | "bash" | "/bin/bash", "-c", script] => *script,
        _ => return None,
    };
    let mut steps = Vec::new();
    for statement in text.split(['\n', ';']).flat_map(|s| s.split("&&")).map(str::trim).filter(|s| !s.is_empty()) {
        let (verb, rest) = statement.split_once(char::is_whitespace).unwrap_or((statement, ""));
        let rest = rest.trim();
        steps.push(match verb {
            "echo" => Step::Echo(unquote(rest).to_owned()),
            "sleep" => {
                let secs: f64 = rest.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
                let d = Duration::from_secs_f64(secs);
                if d > MAX_DURATION {
                    return None;
                }
                Step::Sleep(d)
            }
            "exit" => Step::Exit(parse_exit_code(rest).ok()?),
            _ => return None,
        });
    }
    Some(steps)
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sh_scripts_of_echo_sleep_and_exit_are_understood() {
        let steps = script(&words(&["sh", "-c"]), &words(&["echo 'line one'; sleep 0.5 && echo two\nexit 3"]));
        assert_eq!(
            steps,
            Some(vec![
                Step::Echo("line one".into()),
                Step::Sleep(Duration::from_millis(500)),
                Step::Echo("two".into()),
                Step::Exit(3),
            ])
        );
        assert_eq!(script(&words(&["/bin/sh", "-c", "echo hi"]), &[]), Some(vec![Step::Echo("hi".into())]));
        // Anything else runs as before: by its labels.
        assert_eq!(script(&words(&["python", "train.py"]), &[]), None);
        assert_eq!(script(&words(&["sh", "-c", "echo hi; curl x"]), &[]), None);
        assert_eq!(script(&words(&["sh", "-c", "sleep forever"]), &[]), None);
        assert_eq!(script(&words(&["sh", "-c", "sleep 100000"]), &[]), None);
        assert_eq!(script(&words(&["sh", "-c", "exit 256"]), &[]), None);
    }

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
