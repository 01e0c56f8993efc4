//! Errors of the API, as the agent sends them and the client decodes them.
use serde::{Deserialize, Serialize};

/// A spec field that is wrong, and why. `field` is the JSON name (`loss_percent`, `to_cidrs[1]`);
/// `message` says what was accepted (range, forms) and what was given.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, schemars::JsonSchema,
)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of every error response: `{"error": {"code": ..., "message": ..., "field": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// One error: a stable machine-readable `code`, a sentence for humans, and the offending field
/// when there is one.
///
/// Codes and the HTTP status the agent uses for them: `malformed_body` (400), `invalid_field`
/// (422), `not_found` (404), `conflict` (409, e.g. too many overlapping faults), `capacity`
/// (409: a limit would be exceeded, `--max-faults`, `--max-rules-per-fault` or a map's room;
/// the message names the limit and the count), `unsupported` (422, the kernel lacks what the
/// fault needs), `unauthorized` (401), `forbidden` (403), `too_large` (413, body over
/// `--max-body-bytes`), `rate_limited` (429, over `--rate-limit`, with `Retry-After`),
/// `overloaded` (503, `--max-concurrent-requests` in flight, with `Retry-After`), `timeout`
/// (504, no answer within `--request-timeout`), `internal` (500). Every refusal by a limit
/// comes before anything is written.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, schemars::JsonSchema,
)]
#[error("{message}")]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError {
            code: "invalid_field".into(),
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

/// Parses a JSON body (an object: every body of the API is one) into `T`; an error names the
/// field (`parameters.target_pod_prefix`, `to_selectors[1]`), or `body` when the text is not
/// JSON at all, or not an object.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    // serde's derived structs also take an array of the fields in order (`["dynamo", "w"]`),
    // whose errors then name `[0]` (found by fuzzing, `spec_json` and `seed_inject`).
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(FieldError::new(
            "body",
            "must be a JSON object, got an array".to_owned(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return FieldError::new("body", format!("malformed JSON: {inner}"));
        }
        let msg = inner.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        // serde names a missing field only in the text (the path is its parent's).
        let named = msg
            .find('`')
            .and_then(|s| {
                msg[s + 1..]
                    .find('`')
                    .map(|e| msg[s + 1..s + 1 + e].to_owned())
            })
            .filter(|_| msg.starts_with("missing field"));
        let at_root = path == "." || path == "?" || path.is_empty();
        let field = match (named, at_root) {
            (Some(n), true) => n,
            (Some(n), false) => format!("{path}.{n}"),
            (None, true) => "body".to_owned(),
            (None, false) => path,
        };
        FieldError::new(field, msg)
    })?;
    de.end()
        .map_err(|e| FieldError::new("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod parse_json_tests {
    /// Found by fuzzing (`spec_json`, `seed_inject`): an array was read as the struct's
    /// fields in order, and its errors named `[0]`.
    #[test]
    fn an_array_body_is_refused_naming_the_body() {
        for body in [
            &br#"["dynamo", "frontend"]"#[..],
            br#" [{"namespace": "a"}]"#,
            b"[]",
        ] {
            let e = crate::FaultSpec::from_json(body).unwrap_err();
            assert_eq!(e.field, "body", "{e}");
            assert!(e.message.contains("object"), "{e}");
            let e = crate::seed::InjectRequest::from_json(body).unwrap_err();
            assert_eq!(e.field, "body", "{e}");
        }
    }
}
