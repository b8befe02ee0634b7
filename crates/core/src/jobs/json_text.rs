//! The checks on a payload's or result's JSON text that the server makes and its clients
//! repeat before sending: a client can then tell what the server would refuse (`rota worker`
//! stores such stdout as a string instead of failing every attempt with it), and the two
//! never disagree on the bound.
//!
//! Only the bytes are scanned: whether the text is JSON at all is for a decoder to say.

use super::limits::JSON_DEPTH_MAX;

/// JSON text whose arrays and objects nest deeper than [`JSON_DEPTH_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nests deeper than {JSON_DEPTH_MAX} levels")]
pub struct TooDeep;

/// `Err` when `json`'s arrays and objects nest deeper than [`JSON_DEPTH_MAX`] (brackets
/// inside strings do not count). Allocates nothing.
pub fn check_json_depth(json: &str) -> Result<(), TooDeep> {
    scan(json, |_| {})
}

/// `json` without the whitespace between its tokens (JSON's four: space, tab, newline,
/// carriage return; inside strings everything is kept), or `Err` when it nests deeper than
/// [`JSON_DEPTH_MAX`]. One pass, one allocation.
pub fn compact_json(json: &str) -> Result<String, TooDeep> {
    let mut out = Vec::with_capacity(json.len());
    scan(json, |byte| out.push(byte))?;
    // Only ASCII bytes outside strings were dropped, so the rest is still UTF-8.
    Ok(String::from_utf8(out).unwrap_or_else(|_| json.to_owned()))
}

/// Walks `json` once, handing every byte but the whitespace between tokens to `keep`, and
/// stops at the first bracket past the depth bound.
fn scan(json: &str, mut keep: impl FnMut(u8)) -> Result<(), TooDeep> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json.as_bytes() {
        if in_string {
            keep(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Err(TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        keep(byte);
    }
    Ok(())
}

/// What is wrong with well-formed JSON that a decoder refused, from serde_json's message
/// (its words alone read as a syntax error): a number beyond a double, or a lone UTF-16
/// surrogate escape. `None` for any other error.
pub fn unreadable_json_reason(decoder_message: &str) -> Option<&'static str> {
    if decoder_message.starts_with("number out of range") {
        return Some("a number beyond what a 64-bit float holds");
    }
    ["lone leading surrogate", "unexpected end of hex escape", "invalid unicode code point"]
        .iter()
        .any(|words| decoder_message.starts_with(words))
        .then_some("a \\u escape of a lone UTF-16 surrogate (\\ud800 to \\udfff without its pair), which JSON decoders cannot read back")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_bound_passes_and_one_more_level_is_refused() {
        assert_eq!(check_json_depth(&nested(JSON_DEPTH_MAX)), Ok(()));
        assert_eq!(check_json_depth(&nested(JSON_DEPTH_MAX + 1)), Err(TooDeep));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(JSON_DEPTH_MAX + 1),
            "}".repeat(JSON_DEPTH_MAX + 1)
        );
        assert_eq!(compact_json(&objects), Err(TooDeep));
        // Siblings do not add up: depth is how far in, not how many.
        let wide = vec![nested(JSON_DEPTH_MAX - 1); 10].join(",");
        assert_eq!(check_json_depth(&format!("[{wide}]")), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(r#"["{}", "\"{}"]"#, "[".repeat(200), "{".repeat(200));
        assert_eq!(check_json_depth(&text), Ok(()));
    }

    #[test]
    fn compacting_drops_whitespace_between_tokens_only() {
        assert_eq!(
            compact_json(" { \"a b\" : [ 1 , \"x \\\" y\" ] }\n").as_deref(),
            Ok("{\"a b\":[1,\"x \\\" y\"]}")
        );
        assert_eq!(compact_json("\"\\\\\" ").as_deref(), Ok("\"\\\\\""));
        assert_eq!(compact_json("\u{a0}é\t1").as_deref(), Ok("\u{a0}é1"));
    }
}
