//! The kill switch: one call that makes the datapath pass all traffic at once, whatever faults
//! the agent holds, until it is lifted explicitly (`/v1/kill-switch`, `faultctl stop --all`).
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Longest `by` and `reason`, in bytes.
pub const MAX_TEXT: usize = 256;

/// `POST /v1/kill-switch` (engage) and `DELETE /v1/kill-switch` (lift) body: who pulls it and
/// why, recorded with the time and the caller's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchRequest {
    /// Who acts (a person or a pipeline; 1 to 256 bytes).
    pub by: String,
    /// Why (up to 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl KillSwitchRequest {
    /// Checks `by` (1 to [`MAX_TEXT`] bytes, no control characters) and `reason` (up to
    /// [`MAX_TEXT`] bytes, no control characters).
    pub fn validate(&self) -> Result<(), FieldError> {
        text("by", &self.by, 1)?;
        if let Some(r) = &self.reason {
            text("reason", r, 0)?;
        }
        Ok(())
    }
}

fn text(field: &str, v: &str, min: usize) -> Result<(), FieldError> {
    if v.len() < min || v.len() > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("must be {min} to {MAX_TEXT} bytes long, got {}", v.len()),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not hold control characters"));
    }
    Ok(())
}

/// One pull or lift of the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KillSwitchAction {
    /// Who acted, as the request's `by` gave it (not authenticated: the token is shared).
    pub by: String,
    /// Why, as the request gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the agent acted (RFC 3339, UTC).
    pub at: Timestamp,
    /// The caller's address as the agent saw it (`ip:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The kill switch's state (`GET /v1/kill-switch`, and the answer of engage and lift).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KillSwitch {
    /// Whether the datapath passes all traffic now.
    pub engaged: bool,
    /// The last engage (kept after a lift, for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engaged_by: Option<KillSwitchAction>,
    /// The last lift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_by: Option<KillSwitchAction>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_is_required_and_texts_are_bounded() {
        let ok = KillSwitchRequest {
            by: "sre-oncall".into(),
            reason: Some("checkout is down".into()),
        };
        assert!(ok.validate().is_ok());
        let e = KillSwitchRequest::default().validate().unwrap_err();
        assert_eq!(e.field, "by");
        let long = KillSwitchRequest {
            by: "x".repeat(MAX_TEXT + 1),
            reason: None,
        };
        assert!(long.validate().unwrap_err().message.contains("1 to 256"));
        let ctl = KillSwitchRequest {
            by: "a".into(),
            reason: Some("line\nbreak".into()),
        };
        assert_eq!(ctl.validate().unwrap_err().field, "reason");
    }
}
