//! Times as users write them: RFC 3339 with a time zone, read into Unix milliseconds.
//!
//! Shared by the server (`run_at` in a submit) and the CLI (`--run-at`), so both refuse
//! the same text. A time without `Z` or an offset is refused rather than read as UTC: the
//! user most likely meant their local time, and a job run hours early or late is worse
//! than an error.

/// What a time must look like, for error messages.
pub const RFC3339_EXPECTED: &str =
    "an RFC 3339 time ending in Z or a ±HH:MM offset, e.g. 2026-01-02T03:04:05Z or 2026-01-02T05:04:05+02:00";

/// Reads an RFC 3339 time: `YYYY-MM-DD`, `T` (or `t`, or a space, as RFC 3339 §5.6
/// allows), `HH:MM:SS`, optional fractional seconds, then `Z`, `z` or a `±HH:MM` offset.
/// Answers Unix milliseconds (fractions below a millisecond dropped), or why not.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bytes = text.as_bytes();
    let (local, offset_s) = match bytes.last() {
        Some(b'Z' | b'z') => (&text[..text.len() - 1], 0i64),
        _ => match numeric_offset_s(text) {
            Some(offset_s) => (&text[..text.len() - 6], offset_s),
            None if looks_local(text) => {
                return Err(format!("it has no time zone; give {RFC3339_EXPECTED}"));
            }
            None => return Err(format!("expected {RFC3339_EXPECTED}")),
        },
    };
    if !looks_local(local) {
        return Err(format!("expected {RFC3339_EXPECTED}"));
    }
    // humantime refuses years before 1970 as "out of range", which reads as a bad format.
    if local[..4] < *"1970" {
        return Err("it is before 1970 (the earliest is 1970-01-01T00:00:00Z)".to_owned());
    }
    // humantime reads `T` or a space and UTC only: the offset is applied below.
    let mut utc_text = String::with_capacity(local.len() + 1);
    utc_text.push_str(&local[..10]);
    utc_text.push('T');
    utc_text.push_str(&local[11..]);
    utc_text.push('Z');
    let local_time =
        humantime::parse_rfc3339_weak(&utc_text).map_err(|error| format!("{error}: expected {RFC3339_EXPECTED}"))?;
    let local_ms =
        local_time.duration_since(std::time::UNIX_EPOCH).map_err(|_| "it is before 1970".to_owned())?.as_millis();
    // The local time is `offset` ahead of UTC.
    let utc_ms = i128::try_from(local_ms).unwrap_or(i128::MAX) - i128::from(offset_s) * 1000;
    u64::try_from(utc_ms).map_err(|_| "it is before 1970 or out of range".to_owned())
}

/// `±HH:MM` at the end of `text`, in seconds east of UTC.
fn numeric_offset_s(text: &str) -> Option<i64> {
    let tail = text.get(text.len().checked_sub(6)?..)?.as_bytes();
    let sign = match tail[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits =
        |pair: &[u8]| pair.iter().all(u8::is_ascii_digit).then(|| i64::from((pair[0] - b'0') * 10 + (pair[1] - b'0')));
    let (hours, minutes) = (digits(&tail[1..3])?, digits(&tail[4..6])?);
    (tail[3] == b':' && hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

/// `YYYY-MM-DD[Tt ]HH:MM:SS[.fraction]` by shape (digits where digits go); the values are
/// checked when read.
fn looks_local(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() < 19 {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let fixed = bytes[..19].iter().zip(&shape[..19]).all(|(&byte, &want)| match want {
        b'd' => byte.is_ascii_digit(),
        b'T' => matches!(byte, b'T' | b't' | b' '),
        _ => byte == want,
    });
    let fraction = match &bytes[19..] {
        [] => true,
        [b'.', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    fixed && fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06T11:00:00.250Z.
    const UTC_MS: u64 = 1_796_554_800_250;

    #[test]
    fn rfc3339_times_take_z_or_any_offset_in_any_spelling() {
        for text in [
            "2026-12-06T11:00:00.250Z",
            "2026-12-06t11:00:00.250z",
            "2026-12-06 11:00:00.250Z",
            "2026-12-06T11:00:00.250999Z",
            "2026-12-06T12:00:00.250+01:00",
            "2026-12-06T06:30:00.250-04:30",
            "2026-12-06T11:00:00.250+00:00",
            "2026-12-06T11:00:00.250-00:00",
            "2026-12-07T10:59:00.250+23:59",
        ] {
            assert_eq!(parse_rfc3339_ms(text), Ok(UTC_MS), "{text}");
        }
        assert_eq!(parse_rfc3339_ms("2026-12-06T11:00:00Z"), Ok(UTC_MS - 250));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Ok(0));
    }

    #[test]
    fn rfc3339_times_without_a_time_zone_are_refused_saying_what_is_expected() {
        for text in ["2026-12-06T14:09:00", "2026-12-06 14:09:00", "2026-12-06T14:09:00.250", "2026-12-06t14:09:00"] {
            let error = parse_rfc3339_ms(text).expect_err(text);
            assert!(error.contains("no time zone") && error.contains("2026-01-02T03:04:05Z"), "{text}: {error}");
        }
    }

    #[test]
    fn malformed_rfc3339_times_are_refused() {
        for text in [
            "",
            "yesterday",
            "2026-12-06",
            "2026-12-06T11:00Z",
            "2026-12-06T11:00:00+24:00",
            "2026-12-06T11:00:00+01:60",
            "2026-12-06T11:00:00+0100",
            "2026-12-06T11:00:00.Z",
            "2026-12-06T11:00:00.25xZ",
            "2026-12-06T11:00:00+00:00Z",
            "2026-12-06X11:00:00Z",
            "2026-13-06T11:00:00Z",
            "2026-02-30T11:00:00Z",
            "2026-12-06T25:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "2026-12-06T11:00:00é",
            "é2026-12-06T11:00:00Z",
        ] {
            assert!(parse_rfc3339_ms(text).is_err(), "{text}");
        }
    }

    #[test]
    fn times_before_1970_are_refused_as_such_in_any_spelling() {
        for text in ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1970-01-01T00:59:59+01:00", "1900-06-01T00:00:00-05:00"] {
            let error = parse_rfc3339_ms(text).unwrap_err();
            assert!(error.contains("before 1970"), "{text}: {error}");
        }
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
    }
}
