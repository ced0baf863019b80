//! The `Idempotency-Key` request header of `POST /api/v1/executions`, after the IETF httpapi
//! draft "The Idempotency-Key HTTP Header Field": the key's syntax and the fingerprint of a
//! request body. What a key answers is decided in the handler with the store's claim.
//!
//! A key is 1 to 255 visible ASCII characters (0x21–0x7E), sent as the draft's Structured
//! Field string (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`, with `\"` and
//! `\\` escapes) or bare (`Idempotency-Key: 8e03978e-…`), which is the same key.

use axum::http::{HeaderMap, HeaderName};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer that repeats the one given to an earlier request with the same key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted key.
pub const MAX_KEY_LENGTH: usize = 255;

/// The request's idempotency key, if it sent one; the reason when the header is malformed.
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("send one Idempotency-Key header, not several".to_string());
    }
    let Ok(text) = value.to_str() else {
        return Err(invalid_characters());
    };
    parse_key(text).map(Some)
}

fn invalid_characters() -> String {
    format!(
        "Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (0x21-0x7E), \
         as a quoted string or bare"
    )
}

/// Parses a header value: a Structured Field string or a bare key.
pub fn parse_key(text: &str) -> Result<String, String> {
    let text = text.trim_matches([' ', '\t']);
    let (key, quoted) = match text.strip_prefix('"') {
        Some(rest) => (parse_sf_string(rest)?, true),
        None => (text.to_string(), false),
    };
    if key.is_empty() {
        return Err("Idempotency-Key is empty".to_string());
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(format!(
            "Idempotency-Key is {} characters long, more than {MAX_KEY_LENGTH}",
            key.len()
        ));
    }
    // A bare key cannot hold a quote; a quoted one can, escaped.
    if !key.bytes().all(|byte| (0x21..=0x7e).contains(&byte)) || (!quoted && key.contains('"')) {
        return Err(invalid_characters());
    }
    Ok(key)
}

/// The rest of an `sf-string` after its opening quote (RFC 8941 section 3.3.3).
fn parse_sf_string(quoted: &str) -> Result<String, String> {
    let mut key = String::new();
    let mut characters = quoted.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => match characters.next() {
                Some(escaped @ ('"' | '\\')) => key.push(escaped),
                _ => {
                    return Err(
                        "Idempotency-Key: only \\\" and \\\\ may be escaped in a quoted key"
                            .to_string(),
                    )
                }
            },
            '"' => {
                if characters.next().is_some() {
                    return Err("Idempotency-Key has characters after its closing quote".into());
                }
                return Ok(key);
            }
            other => key.push(other),
        }
    }
    Err("Idempotency-Key has no closing quote".to_string())
}

/// The fingerprint of a request body: sha256 (hex) of its canonical JSON (object keys sorted,
/// no whitespace), so the same body written with other spacing or key order is the same.
pub fn fingerprint(body: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|left, right| left.0.cmp(right.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn quoted_and_bare_keys_are_the_same_key() {
        assert_eq!(parse_key("\"8e03978e-40d5\"").unwrap(), "8e03978e-40d5");
        assert_eq!(parse_key("8e03978e-40d5").unwrap(), "8e03978e-40d5");
        assert_eq!(parse_key("  \"a\\\"b\\\\c\"\t").unwrap(), "a\"b\\c");
        assert_eq!(parse_key(&"k".repeat(255)).unwrap().len(), 255);
    }

    #[test]
    fn invalid_keys_are_refused_with_the_reason() {
        for (value, reason) in [
            ("", "empty"),
            ("\"\"", "empty"),
            ("   ", "empty"),
            ("\"abc", "no closing quote"),
            ("\"a\"b", "after its closing quote"),
            ("\"a\\nb\"", "may be escaped"),
            ("a b", "visible ASCII"),
            ("\"a b\"", "visible ASCII"),
            ("a\"b", "visible ASCII"),
            ("tab\there", "visible ASCII"),
            ("clé", "visible ASCII"),
        ] {
            let error = parse_key(value).expect_err(value);
            assert!(error.contains(reason), "{value:?}: {error}");
        }
        let error = parse_key(&"k".repeat(256)).unwrap_err();
        assert!(
            error.contains("256 characters long, more than 255"),
            "{error}"
        );
        let error = parse_key(&format!("\"{}\"", "k".repeat(256))).unwrap_err();
        assert!(error.contains("more than 255"), "{error}");
    }

    #[test]
    fn headers_give_none_one_key_or_an_error() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_from_headers(&headers), Ok(None));
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-1\""));
        assert_eq!(key_from_headers(&headers), Ok(Some("k-1".to_string())));
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-2\""));
        assert!(key_from_headers(&headers).unwrap_err().contains("one"));
        let mut headers = HeaderMap::new();
        headers.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(key_from_headers(&headers)
            .unwrap_err()
            .contains("visible ASCII"));
    }

    #[test]
    fn fingerprints_ignore_spacing_and_key_order_only() {
        let one: Value =
            serde_json::from_str(r#"{"action":"a.b","parameters":{"x":1,"y":[1,{"q":2,"p":3}]}}"#)
                .unwrap();
        let same: Value = serde_json::from_str(
            r#"{ "parameters": { "y": [1, {"p": 3, "q": 2}], "x": 1 }, "action": "a.b" }"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&one), fingerprint(&same));
        assert_eq!(fingerprint(&one).len(), 64);
        for other in [
            json!({"action": "a.b", "parameters": {"x": 2, "y": [1, {"q": 2, "p": 3}]}}),
            json!({"action": "a.b", "parameters": {"x": 1, "y": [{"q": 2, "p": 3}, 1]}}),
            json!({"action": "a.b", "parameters": {"x": "1", "y": [1, {"q": 2, "p": 3}]}}),
            json!({"action": "a.c", "parameters": {"x": 1, "y": [1, {"q": 2, "p": 3}]}}),
        ] {
            assert_ne!(fingerprint(&one), fingerprint(&other), "{other}");
        }
        // Keys are escaped, so no key can forge the separators of another body.
        assert_ne!(
            fingerprint(&json!({"a\":1,\"b": 2})),
            fingerprint(&json!({"a": 1, "b": 2}))
        );
    }
}
