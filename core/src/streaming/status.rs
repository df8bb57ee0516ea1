//! The exit status of a remote command as the protocols report it: a
//! `metav1.Status` JSON object from protocol v4 on, plain text before.

use serde_json::{Value, json};

/// How a protocol version reports the outcome on the error channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusFormat {
    /// v1–v3: nothing on success, the error message as text otherwise.
    Text,
    /// v4 and v5: a JSON `metav1.Status`.
    Json,
}

/// The outcome of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The bytes to write on the error channel, if any.
pub(crate) fn encode(outcome: &Outcome, format: StatusFormat) -> Option<Vec<u8>> {
    let status: Value = match outcome {
        Outcome::Exited(0) => {
            if format == StatusFormat::Text {
                return None;
            }
            json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(code) => {
            let message = format!("command terminated with non-zero exit code: {code}");
            if format == StatusFormat::Text {
                return Some(message.into_bytes());
            }
            json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Outcome::Failed(message) => {
            if format == StatusFormat::Text {
                return Some(message.clone().into_bytes());
            }
            json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
        }
    };
    Some(status.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(outcome: Outcome) -> Value {
        serde_json::from_slice(&encode(&outcome, StatusFormat::Json).expect("json")).expect("parse")
    }

    #[test]
    fn v4_status_objects() {
        assert_eq!(
            parsed(Outcome::Exited(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let failure = parsed(Outcome::Exited(3));
        assert_eq!(failure["status"], "Failure");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "3");
        assert_eq!(
            parsed(Outcome::Failed("boom".into()))["reason"],
            "InternalError"
        );
    }

    #[test]
    fn pre_v4_status_is_text_and_silent_on_success() {
        assert_eq!(encode(&Outcome::Exited(0), StatusFormat::Text), None);
        assert_eq!(
            encode(&Outcome::Failed("boom".into()), StatusFormat::Text),
            Some(b"boom".to_vec())
        );
    }
}
