//! Parsers of flag values shared by every command: durations, percentages, taint keys.
//!
//! Parsing is the first line of defence against bad input: a value that one flag can get wrong
//! on its own (a zero duration, a percentage over 100) is rejected by clap with the flag's name
//! and exit code 2. Checks that need several flags at once live with the settings that combine
//! them ([`crate::config`]).

use std::time::Duration;

/// Parses a humantime duration ("90s", "10m", "1h30m") that must be greater than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("not a duration ({e}); write it like 90s, 10m or 1h30m"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Parses a percentage between 0 and 100 (a trailing `%` is allowed).
pub fn percentage(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| "not a number; write a percentage like 20".to_string())?;
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        return Err("must be between 0 and 100".into());
    }
    Ok(v)
}

/// Parses a taint key: non-empty, optional DNS prefix, name of at most 63 characters.
pub fn taint_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')));
    if !name_ok || !prefix_ok {
        return Err(format!("'{s}' is not a valid taint key (want [prefix/]name, name of at most 63 alphanumerics, '-', '_', '.')"));
    }
    Ok(s.to_string())
}

/// Two flags that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} ({value}) must be {relation} {other} ({other_value})")]
pub struct Contradiction {
    /// The flag that is out of line.
    pub flag: &'static str,
    /// Its value.
    pub value: String,
    /// How it must relate to the other.
    pub relation: &'static str,
    /// The other flag.
    pub other: &'static str,
    /// Its value.
    pub other_value: String,
}

/// `Ok` when the first duration flag is strictly smaller than the second.
pub fn below((flag, value): (&'static str, Duration), (other, other_value): (&'static str, Duration)) -> Result<(), Contradiction> {
    if value < other_value {
        return Ok(());
    }
    let show = |d: Duration| humantime::format_duration(d).to_string();
    Err(Contradiction { flag, value: show(value), relation: "smaller than", other, other_value: show(other_value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_positive_and_readable() {
        assert_eq!(positive_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(positive_duration("0s").unwrap_err().contains("greater than zero"));
        assert!(positive_duration("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn percentages_are_between_0_and_100() {
        assert_eq!(percentage("20%"), Ok(20.0));
        assert!(percentage("120").is_err());
        assert!(percentage("NaN").is_err());
    }

    #[test]
    fn a_duration_not_below_another_names_both_flags() {
        assert_eq!(below(("--a", Duration::from_secs(1)), ("--b", Duration::from_secs(2))), Ok(()));
        let e = below(("--a", Duration::from_secs(2)), ("--b", Duration::from_secs(2))).unwrap_err().to_string();
        assert_eq!(e, "--a (2s) must be smaller than --b (2s)");
    }

    #[test]
    fn taint_keys_follow_kubernetes_rules() {
        assert_eq!(taint_key("pulsecheck.dev/zombie").as_deref(), Ok("pulsecheck.dev/zombie"));
        assert!(taint_key("").is_err());
        assert!(taint_key("Bad/Prefix/x").is_err());
        assert!(taint_key(&"x".repeat(64)).is_err());
    }
}
