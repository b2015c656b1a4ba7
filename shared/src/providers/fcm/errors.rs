//! FCM's error answers: the Google error JSON and its classification (the
//! table in the parent module's documentation).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::providers::{
    ErrorClass, Outcome,
    http::{Refusal, snippet},
};

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize, Default)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

impl GoogleError {
    /// FCM's own code when it gave one, else the canonical Google status.
    fn code(&self) -> &str {
        self.details
            .iter()
            .find_map(|d| d.error_code.as_deref())
            .unwrap_or(&self.status)
    }

    /// Whether the error is about the registration token, not the message.
    fn names_token(&self) -> bool {
        self.message.contains("registration token")
            || self
                .details
                .iter()
                .flat_map(|d| &d.field_violations)
                .any(|v| v.field == "message.token")
    }
}

/// The FCM error code of an error body, empty if it has none.
pub(super) fn error_code(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error.code().to_owned())
        .unwrap_or_default()
}

/// Classifies FCM's answer to a send (see the module's table).
pub fn classify(status: StatusCode, body: &str, after: Option<Duration>) -> Outcome {
    if status.is_success() {
        #[derive(Deserialize)]
        struct Sent {
            name: Option<String>,
        }
        let name = serde_json::from_str::<Sent>(body).ok().and_then(|s| s.name);
        return Outcome::Sent { provider_id: name };
    }
    let parsed = serde_json::from_str::<ErrorBody>(body).ok();
    let err = parsed.as_ref().map(|b| &b.error);
    let code = err.map(GoogleError::code).unwrap_or("");
    let reason = match err {
        Some(e) if !code.is_empty() => format!("fcm {} {code}: {}", status.as_u16(), e.message),
        _ => format!("fcm {}: {}", status.as_u16(), snippet(body, 200)),
    };
    let refusal = Refusal { reason, after };
    match (status.as_u16(), code) {
        (_, "UNREGISTERED") => refusal.deactivate(ErrorClass::Unregistered),
        // Only FCM's explicit `UNREGISTERED` deactivates: any other 404 more
        // likely comes from a wrong base URL or project id, and deactivating
        // every token on it would be a disaster.
        (404, _) => Outcome::Permanent {
            class: ErrorClass::Config,
            reason: format!("{} (check FCM_BASE_URL and FCM_PROJECT_ID)", refusal.reason),
            deactivate: false,
        },
        // The token belongs to another Firebase project: useless to us, but
        // the likelier cause is our project id, so the token is kept.
        (_, "SENDER_ID_MISMATCH") => refusal.permanent(ErrorClass::InvalidAddress),
        // FCM's codes for throttling and failure count whatever the status,
        // and the status counts before the auth code below: a 5xx naming
        // `THIRD_PARTY_AUTH_ERROR` is retried.
        (_, "QUOTA_EXCEEDED") | (429, _) => refusal.retry(ErrorClass::RateLimited),
        (_, "UNAVAILABLE" | "INTERNAL") | (500.., _) => refusal.retry(ErrorClass::Server),
        (401 | 403, _) | (_, "THIRD_PARTY_AUTH_ERROR") => refusal.permanent(ErrorClass::Auth),
        (400, _) if err.is_some_and(GoogleError::names_token) => {
            refusal.deactivate(ErrorClass::InvalidAddress)
        }
        _ => refusal.permanent(ErrorClass::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fcm_error(code: u16, status: &str, error_code: &str, message: &str) -> String {
        json!({"error": {"code": code, "message": message, "status": status, "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
        ]}})
        .to_string()
    }

    fn class(outcome: &Outcome) -> (Option<ErrorClass>, bool) {
        match outcome {
            Outcome::Sent { .. } => (None, false),
            Outcome::Retry { class, .. } => (Some(*class), false),
            Outcome::Permanent {
                class, deactivate, ..
            } => (Some(*class), *deactivate),
        }
    }

    #[test]
    fn classifies_documented_errors() {
        use ErrorClass::*;
        let s = |c| StatusCode::from_u16(c).unwrap();
        // (HTTP status, Google status, FCM error code, message, class, deactivate)
        #[rustfmt::skip]
        let documented = [
            (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.", Unregistered, true),
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", InvalidAddress, true),
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'", Rejected, false),
            (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch", InvalidAddress, false),
            (403, "PERMISSION_DENIED", "PERMISSION_DENIED", "denied", Auth, false),
            (503, "UNAVAILABLE", "UNAVAILABLE", "try later", Server, false),
        ];
        for (code, status, error_code, message, want, deactivate) in documented {
            let body = fcm_error(code, status, error_code, message);
            assert_eq!(
                class(&classify(s(code), &body, None)),
                (Some(want), deactivate),
                "{error_code}: {message}"
            );
        }
        // Answers without FCM's detail: a proxy's page, Google's bare error.
        #[rustfmt::skip]
        let bare = [
            (502, "<html>bad gateway</html>", Server),
            (404, "<html>Not Found</html>", Config),
            (404, r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#, Config),
        ];
        for (code, body, want) in bare {
            assert_eq!(
                class(&classify(s(code), body, None)),
                (Some(want), false),
                "{body}"
            );
        }
        let quota = fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota");
        let after = Some(Duration::from_secs(30));
        assert_eq!(
            classify(s(429), &quota, after),
            Outcome::Retry {
                class: RateLimited,
                reason: "fcm 429 QUOTA_EXCEEDED: quota".into(),
                after
            }
        );
    }

    #[test]
    fn success_carries_the_message_name() {
        let outcome = classify(
            StatusCode::OK,
            r#"{"name":"projects/p/messages/0:1"}"#,
            None,
        );
        assert_eq!(
            outcome,
            Outcome::Sent {
                provider_id: Some("projects/p/messages/0:1".into())
            }
        );
    }
}
