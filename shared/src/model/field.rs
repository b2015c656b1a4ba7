use serde::{Deserialize, Serialize};

/// One invalid field: where it is (a dotted path such as `to.users[3]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field in the request, `content.email.subject`, `to.users[2]`.
    pub field: String,
    /// What is wrong with it, in a sentence a client developer can act on.
    pub message: String,
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
