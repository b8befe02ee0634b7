//! `/v2/keys` parameters: etcd's `parseKeyRequest`, check for check and in its order, so the
//! first bad field gets the same error code and cause as on etcd. Parameter errors are
//! 2xx codes with index 0; they come before any store check.

use rota_core::v2::V2Error;

use crate::form::{parse_bool, parse_uint, Form};

/// The parsed parameters of one `/v2/keys` request. Absent fields take etcd's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyParams {
    /// `value`; missing is `""`.
    pub value: String,
    pub dir: bool,
    pub recursive: bool,
    pub sorted: bool,
    pub wait: bool,
    pub quorum: bool,
    pub stream: bool,
    /// `prevValue`; `Some("")` is refused here (201).
    pub prev_value: Option<String>,
    /// `prevIndex`; 0 when absent (and 0 counts as absent).
    pub prev_index: u64,
    /// `waitIndex`; 0 when absent.
    pub wait_index: u64,
    /// `ttl` in seconds; `None` for missing or empty (a permanent node).
    pub ttl_s: Option<u64>,
    pub prev_exist: Option<bool>,
    pub refresh: Option<bool>,
    /// `noValueOnSuccess=true`: successful writes answer only `{"action":..}`.
    pub no_value_on_success: bool,
}

const CODE_PREV_VALUE_REQUIRED: u16 = 201;
const CODE_TTL_NAN: u16 = 202;
const CODE_INDEX_NAN: u16 = 203;
const CODE_INVALID_FIELD: u16 = 209;
const CODE_REFRESH_VALUE: u16 = 211;
const CODE_REFRESH_TTL_REQUIRED: u16 = 212;

fn request_error(code: u16, cause: &str) -> V2Error {
    V2Error::new(code, Some(cause.to_string()), 0)
}

/// etcd's `getBool`: absent is false; present must parse (even empty).
fn get_bool(form: &Form, name: &str) -> Result<bool, V2Error> {
    match form.get(name) {
        None => Ok(false),
        Some(text) => parse_bool(text).ok_or_else(|| {
            request_error(CODE_INVALID_FIELD, &format!("invalid value for \"{name}\""))
        }),
    }
}

/// etcd's `getUint64`: absent is 0; present must parse (even empty).
fn get_index(form: &Form, name: &str) -> Result<u64, V2Error> {
    match form.get(name) {
        None => Ok(0),
        Some(text) => parse_uint(text)
            .ok_or_else(|| request_error(CODE_INDEX_NAN, &format!("invalid value for \"{name}\""))),
    }
}

/// Error 209 for a key or field whose bytes are not UTF-8 once unescaped. etcd keeps such
/// bytes (its keys and values are Go strings); rota holds keys and values as text, in which
/// different bad bytes would all read U+FFFD: `k%FF` and `k%FE` would be one key, and a
/// `prevValue` would match a value it differs from. So no such key or value is written.
pub fn not_utf8(what: &str) -> V2Error {
    request_error(
        CODE_INVALID_FIELD,
        &format!("{what} is not UTF-8 once percent-decoded (rota keeps keys and values as UTF-8 text)"),
    )
}

/// The field of a write that must be UTF-8 and is not, if any: `value` (PUT, POST) and
/// `prevValue` (PUT, DELETE); other methods ignore them, as etcd does.
pub fn non_utf8_field(form: &Form, takes_value: bool, takes_prev_value: bool) -> Option<&'static str> {
    if takes_value && !form.is_utf8("value") {
        return Some("\"value\"");
    }
    if takes_prev_value && !form.is_utf8("prevValue") {
        return Some("\"prevValue\"");
    }
    None
}

/// Parses and validates, in etcd's order. `is_get` is `method == "GET"` (etcd refuses `wait`
/// on every other method, HEAD included).
pub fn parse_key_params(form: &Form, is_get: bool) -> Result<KeyParams, V2Error> {
    let prev_index = get_index(form, "prevIndex")?;
    let wait_index = get_index(form, "waitIndex")?;
    let recursive = get_bool(form, "recursive")?;
    let sorted = get_bool(form, "sorted")?;
    let wait = get_bool(form, "wait")?;
    let dir = get_bool(form, "dir")?;
    let quorum = get_bool(form, "quorum")?;
    let stream = get_bool(form, "stream")?;
    if wait && !is_get {
        return Err(request_error(
            CODE_INVALID_FIELD,
            "\"wait\" can only be used with GET requests",
        ));
    }
    let prev_value = form.get("prevValue");
    if prev_value == Some("") {
        return Err(request_error(
            CODE_PREV_VALUE_REQUIRED,
            "\"prevValue\" cannot be empty",
        ));
    }
    let no_value_on_success = get_bool(form, "noValueOnSuccess")?;
    let ttl_s = match form.get("ttl") {
        None | Some("") => None,
        Some(text) => Some(
            parse_uint(text)
                .ok_or_else(|| request_error(CODE_TTL_NAN, "invalid value for \"ttl\""))?,
        ),
    };
    let prev_exist = match form.get("prevExist") {
        None => None,
        Some(text) => Some(
            parse_bool(text)
                .ok_or_else(|| request_error(CODE_INVALID_FIELD, "invalid value for prevExist"))?,
        ),
    };
    let value = form.get("value").unwrap_or_default();
    let refresh = match form.get("refresh") {
        None => None,
        Some(text) => {
            let refresh = parse_bool(text)
                .ok_or_else(|| request_error(CODE_INVALID_FIELD, "invalid value for refresh"))?;
            if refresh {
                if !value.is_empty() {
                    return Err(request_error(
                        CODE_REFRESH_VALUE,
                        "A value was provided on a refresh",
                    ));
                }
                if ttl_s.is_none() {
                    return Err(request_error(CODE_REFRESH_TTL_REQUIRED, "No TTL value set"));
                }
            }
            Some(refresh)
        }
    };
    Ok(KeyParams {
        value: value.to_string(),
        dir,
        recursive,
        sorted,
        wait,
        quorum,
        stream,
        prev_value: prev_value.map(str::to_string),
        prev_index,
        wait_index,
        ttl_s,
        prev_exist,
        refresh,
        no_value_on_success,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str, is_get: bool) -> Result<KeyParams, (u16, String)> {
        let mut form = Form::default();
        form.extend_from_urlencoded(query.as_bytes())
            .expect("test forms decode");
        parse_key_params(&form, is_get)
            .map_err(|error| (error.code, error.cause.unwrap_or_default()))
    }

    fn error(query: &str) -> (u16, String) {
        parse(query, true).expect_err(query)
    }

    #[test]
    fn each_bad_field_gets_etcds_code_and_cause() {
        let cases = [
            ("prevIndex=abc", 203, r#"invalid value for "prevIndex""#),
            ("prevIndex=", 203, r#"invalid value for "prevIndex""#),
            ("prevIndex=-1", 203, r#"invalid value for "prevIndex""#),
            ("waitIndex=1.5", 203, r#"invalid value for "waitIndex""#),
            ("recursive=yes", 209, r#"invalid value for "recursive""#),
            ("sorted=2", 209, r#"invalid value for "sorted""#),
            ("wait=", 209, r#"invalid value for "wait""#),
            ("dir=bogus", 209, r#"invalid value for "dir""#),
            ("quorum=x", 209, r#"invalid value for "quorum""#),
            ("stream=x", 209, r#"invalid value for "stream""#),
            ("prevValue=", 201, r#""prevValue" cannot be empty"#),
            (
                "noValueOnSuccess=x",
                209,
                r#"invalid value for "noValueOnSuccess""#,
            ),
            ("ttl=abc", 202, r#"invalid value for "ttl""#),
            ("ttl=-1", 202, r#"invalid value for "ttl""#),
            ("ttl=+5", 202, r#"invalid value for "ttl""#),
            ("ttl=1.5", 202, r#"invalid value for "ttl""#),
            (
                "ttl=18446744073709551616",
                202,
                r#"invalid value for "ttl""#,
            ),
            ("prevExist=bogus", 209, "invalid value for prevExist"),
            ("refresh=bogus", 209, "invalid value for refresh"),
            (
                "refresh=true&ttl=5&value=x",
                211,
                "A value was provided on a refresh",
            ),
            ("refresh=true", 212, "No TTL value set"),
            ("refresh=true&ttl=", 212, "No TTL value set"),
        ];
        for (query, code, cause) in cases {
            assert_eq!(error(query), (code, cause.to_string()), "{query}");
        }
    }

    #[test]
    fn checks_run_in_etcds_order() {
        assert_eq!(error("ttl=x&prevIndex=x").0, 203);
        assert_eq!(error("dir=x&waitIndex=x").0, 203);
        assert_eq!(error("prevExist=x&ttl=x").0, 202);
        assert_eq!(error("prevValue=&dir=x").0, 209);
        assert_eq!(error("prevValue=&ttl=x").0, 201);
        assert_eq!(
            error("refresh=x&prevExist=x").1,
            "invalid value for prevExist"
        );
    }

    #[test]
    fn wait_is_only_allowed_on_get() {
        assert_eq!(
            parse("wait=true", false).unwrap_err(),
            (
                209,
                r#""wait" can only be used with GET requests"#.to_string()
            )
        );
        assert!(parse("wait=true", true).unwrap().wait);
    }

    #[test]
    fn empty_ttl_means_permanent_and_zero_prev_index_means_absent() {
        let params = parse("ttl=&prevIndex=0&value=v", false).unwrap();
        assert_eq!(params.ttl_s, None);
        assert_eq!(params.prev_index, 0);
        assert_eq!(params.value, "v");
        assert_eq!(parse("ttl=0", false).unwrap().ttl_s, Some(0));
    }

    #[test]
    fn refresh_with_empty_value_and_ttl_is_accepted() {
        let params = parse("refresh=true&ttl=5&value=", false).unwrap();
        assert_eq!(params.refresh, Some(true));
        assert_eq!(params.ttl_s, Some(5));
        assert_eq!(
            parse("refresh=false&value=x", false).unwrap().refresh,
            Some(false)
        );
    }

    #[test]
    fn missing_fields_take_etcds_defaults() {
        assert_eq!(parse("", true).unwrap(), KeyParams::default());
    }
}
