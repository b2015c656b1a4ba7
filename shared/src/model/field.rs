use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

/// One invalid field: where it is (a dotted path such as `to.users[3]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Path of the field in the request, `content.email.subject`, `to.users[2]`.
    pub field: String,
    /// What is wrong with it, in a sentence a client developer can act on.
    pub message: String,
}

/// Deserializes a JSON value, naming the field that does not fit by its
/// path (`.` for the value as a whole).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|err| FieldError {
        field: err.path().to_string(),
        message: err.into_inner().to_string(),
    })
}

/// Collects every invalid field of one request so a client sees them all at once.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Records one invalid field.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs a parser and records its error under `field`, returning the value if it parsed.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(err) => {
                self.push(field, err.to_string());
                None
            }
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recorded errors, in the order found.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    /// `Ok(value)` when nothing was recorded, the errors otherwise.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self.0)
        }
    }
}
/// The path (`data.note`, `to.users[2]`) of the first string or object key
/// in `value` that holds NUL (U+0000). PostgreSQL stores NUL neither in
/// `text` nor in `jsonb`, so a request carrying one is refused at the edge
/// rather than failing (and taking a group insert down with it) in the
/// database.
pub fn find_nul(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_found_with_its_path() {
        assert_eq!(find_nul(&json!({"a": ["x", "y"], "b": 1})), None);
        assert_eq!(
            find_nul(&json!({"to": {"users": ["ok", "a\u{0}b"]}})).as_deref(),
            Some("to.users[1]")
        );
        assert_eq!(
            find_nul(&json!({"data": {"k\u{0}": 1}})).as_deref(),
            Some("data.k\\u0000")
        );
        assert_eq!(find_nul(&json!("\u{0}")).as_deref(), Some(""));
    }
}
