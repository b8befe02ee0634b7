//! [`RawJson`]: a job's payload or result as JSON text, carried unchanged between the user,
//! the server and a worker's command.
//!
//! Why text and not a `serde_json::Value`: a tree re-encodes what it was given. Its objects
//! come back with their keys sorted, integers beyond 64 bits become floats and lose digits
//! (`123456789012345678901234567890` comes back as `1.2345678901234568e29`), and numbers and
//! escapes are respelled (`1E2` as `100.0`, `"\u00e9"` as `"é"`). The server keeps payloads
//! and results as the text it was sent (less the whitespace between tokens), so the client
//! does the same: a `RawJson` is a `serde_json` `RawValue`, written into request bodies as
//! is and read from answers without ever being parsed into a tree.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// One JSON value as text: exactly the text it was made from (less the whitespace around
/// it), or exactly as the server sent it. Two are equal when their texts are, so
/// `{"a":1}` and `{"a": 1}` differ.
///
/// Read the value with [`RawJson::decode`] (into your own type, or a `serde_json::Value`
/// when key order and number spelling do not matter). Make one from text with
/// [`RawJson::from_text`] (or `"…".parse()`), or from a serializable value with
/// [`RawJson::from_value`] or `From<serde_json::Value>`.
///
/// Like any `RawValue`, it decodes only from a `serde_json` deserializer reading the text
/// itself: not through `#[serde(flatten)]` or an untagged enum, which buffer the value
/// first and lose its text.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// `null`: the payload of a job submitted without one, the result of a job that has
    /// none.
    pub fn null() -> RawJson {
        RawJson(RawValue::NULL.to_owned())
    }

    /// `text` as one JSON value, kept byte for byte less the JSON whitespace (space, tab,
    /// newline, carriage return) around it. Refused unless the server takes it as a payload
    /// or result: not JSON, more than one value, a number beyond a double's range (`1e400`),
    /// a lone UTF-16 surrogate (`"\ud800"`), nesting deeper than the server's
    /// [`JSON_DEPTH_MAX`](rota_core::jobs::limits::JSON_DEPTH_MAX) (64; the server's own
    /// check, shared).
    pub fn from_text(text: &str) -> Result<RawJson, serde_json::Error> {
        let text = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        rota_core::jobs::check_json_depth(text).map_err(serde::de::Error::custom)?;
        // Capturing a RawValue only scans the text; a full decode also reads its numbers
        // and escapes. The tree is the check's by-product and is dropped.
        serde_json::from_str::<Value>(text)?;
        RawValue::from_string(text.to_owned()).map(RawJson)
    }

    /// `value` encoded as JSON (as `serde_json::to_string` writes it).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<RawJson, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Decodes the text into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    pub fn is_null(&self) -> bool {
        self.get() == "null"
    }
}

impl Default for RawJson {
    fn default() -> RawJson {
        RawJson::null()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.get())
    }
}

/// The JSON text as it is.
impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl FromStr for RawJson {
    type Err = serde_json::Error;

    /// [`RawJson::from_text`].
    fn from_str(text: &str) -> Result<RawJson, serde_json::Error> {
        RawJson::from_text(text)
    }
}

/// The tree encoded (keys in the tree's order, which `serde_json` keeps sorted).
impl From<Value> for RawJson {
    fn from(value: Value) -> RawJson {
        RawJson::from(&value)
    }
}

impl From<&Value> for RawJson {
    fn from(value: &Value) -> RawJson {
        // A Value always encodes: its keys are strings and its numbers finite.
        RawJson::from_value(value).expect("a serde_json::Value encodes as JSON")
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> RawJson {
        RawJson(raw)
    }
}

impl From<RawJson> for Box<RawValue> {
    fn from(json: RawJson) -> Box<RawValue> {
        json.0
    }
}

impl Serialize for RawJson {
    /// To `serde_json`, the text as it is.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawJson, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        r#"{"z":1,"a":123456789012345678901234567890,"f":1.0,"e":1E2,"s":"caf\u00e9"}"#;

    #[test]
    fn raw_json_keeps_the_text_it_was_given() {
        let json = RawJson::from_text(TEXT).expect("json");
        assert_eq!(json.get(), TEXT);
        assert_eq!(json.to_string(), TEXT);
        let spaced = format!(" \n\t{TEXT}\r\n ");
        assert_eq!(RawJson::from_text(&spaced).expect("json").get(), TEXT);
        // Inner whitespace is the text's own (the server drops it when it stores a job).
        assert_eq!(RawJson::from_text("[1, 2]").expect("json").get(), "[1, 2]");
        assert_eq!("7".parse::<RawJson>().expect("json").get(), "7");
    }

    #[test]
    fn raw_json_refuses_what_the_server_refuses() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let depth_max = rota_core::jobs::limits::JSON_DEPTH_MAX;
        assert!(RawJson::from_text(&nested(depth_max)).is_ok());
        let error = RawJson::from_text(&nested(depth_max + 1)).expect_err("too deep");
        assert!(
            error.to_string().contains("nests deeper than 64"),
            "{error}"
        );
        let too_deep = nested(200);
        for bad in [
            "",
            "{",
            "{'a': 1}",
            "1 2",
            "1e400",
            r#""\ud800""#,
            &too_deep,
            "\u{a0}1",
        ] {
            assert!(RawJson::from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_json_round_trips_through_serde_as_text() {
        let body = format!(r#"{{"payload":{TEXT},"n":1}}"#);
        #[derive(Deserialize, Serialize)]
        struct Body {
            payload: RawJson,
            n: u32,
        }
        let decoded: Body = serde_json::from_str(&body).expect("decode");
        assert_eq!(decoded.payload.get(), TEXT);
        assert_eq!(serde_json::to_string(&decoded).expect("encode"), body);
    }

    #[test]
    fn raw_json_decodes_into_types_and_trees() {
        let json = RawJson::from_text(r#"{"b":[1,2],"a":"x"}"#).expect("json");
        #[derive(Debug, PartialEq, Deserialize)]
        struct Mine {
            a: String,
            b: Vec<u8>,
        }
        assert_eq!(
            json.decode::<Mine>().expect("decode"),
            Mine {
                a: "x".into(),
                b: vec![1, 2]
            }
        );
        let tree: Value = json.decode().expect("decode");
        assert_eq!(tree, serde_json::json!({"a": "x", "b": [1, 2]}));
        // From a tree: its own (sorted) order.
        assert_eq!(RawJson::from(tree).get(), r#"{"a":"x","b":[1,2]}"#);
        assert_eq!(
            RawJson::from_value("a\nb").expect("json").get(),
            r#""a\nb""#
        );
    }

    #[test]
    fn raw_json_defaults_to_null_and_compares_texts() {
        assert!(RawJson::default().is_null());
        assert_eq!(RawJson::default(), RawJson::null());
        assert_eq!(RawJson::null().get(), "null");
        let compact = RawJson::from_text(r#"{"a":1}"#).expect("json");
        let spaced = RawJson::from_text(r#"{"a": 1}"#).expect("json");
        assert_ne!(compact, spaced);
        assert_eq!(compact, RawJson::from_text(r#" {"a":1} "#).expect("json"));
        assert_eq!(format!("{compact:?}"), r#"RawJson({"a":1})"#);
    }
}
