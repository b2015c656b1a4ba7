//! The dead-letter selection of the admin pages, as a query string or form:
//! parsed into a [`Filter`], written back into links, and put in canonical
//! form for the replay confirmation's token.

use axum::{http::StatusCode, response::Response};
use serde::Deserialize;

use super::html::{self, nonempty};
use crate::{db::dead_letters::Filter, dlq::parse_when, model::FieldError};

/// Filters and options as an HTML form sends them: every field a string, an
/// empty field meaning "any".
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Selection {
    pub id: Option<String>,
    pub tenant: Option<String>,
    pub channel: Option<String>,
    pub error_class: Option<String>,
    pub notification: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// List: hide records already replayed.
    pub unreplayed: Option<String>,
    /// Replay: include records already replayed.
    pub again: Option<String>,
    pub limit: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(nonempty(v), Some("1" | "on" | "true" | "yes"))
}

impl Selection {
    /// The filter, or which field is wrong.
    pub fn filter(&self) -> Result<Filter, FieldError> {
        let wrong = |field: &str, message: String| FieldError {
            field: field.into(),
            message,
        };
        let uuid = |name: &str, v: &Option<String>| {
            nonempty(v)
                .map(|s| {
                    s.parse()
                        .map_err(|_| wrong(name, format!("`{s}` is not a UUID")))
                })
                .transpose()
        };
        let time = |name: &str, v: &Option<String>| {
            nonempty(v)
                .map(|s| parse_when(s).map_err(|e| wrong(name, e)))
                .transpose()
        };
        Ok(Filter {
            id: uuid("id", &self.id)?,
            tenant: nonempty(&self.tenant).map(str::to_owned),
            channel: nonempty(&self.channel).map(str::to_owned),
            error_class: nonempty(&self.error_class).map(str::to_owned),
            notification_id: uuid("notification", &self.notification)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            only_unreplayed: flag(&self.unreplayed),
        })
    }

    /// Whether a replay includes records already replayed.
    pub fn again(&self) -> bool {
        flag(&self.again)
    }

    /// The limit asked for, within `1..=max`, else `default`.
    pub fn limit(&self, default: i64, max: i64) -> i64 {
        nonempty(&self.limit)
            .and_then(|s| s.parse::<i64>().ok())
            .map_or(default, |n| n.clamp(1, max))
    }

    fn fields(&self) -> [(&'static str, Option<&str>); 10] {
        [
            ("id", nonempty(&self.id)),
            ("tenant", nonempty(&self.tenant)),
            ("channel", nonempty(&self.channel)),
            ("error_class", nonempty(&self.error_class)),
            ("notification", nonempty(&self.notification)),
            ("since", nonempty(&self.since)),
            ("until", nonempty(&self.until)),
            ("unreplayed", flag(&self.unreplayed).then_some("1")),
            ("again", flag(&self.again).then_some("1")),
            ("limit", nonempty(&self.limit)),
        ]
    }

    /// The query string of the set fields, in a fixed order: links carry it,
    /// and the replay token signs it, so the same selection always reads the
    /// same.
    pub fn query(&self) -> String {
        html::query(&self.fields())
    }

    /// The set fields, for hidden form inputs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        self.fields()
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, v.to_owned())))
            .collect()
    }

    /// This selection with one field changed.
    pub fn with(&self, change: impl FnOnce(&mut Self)) -> Self {
        let mut copy = self.clone();
        change(&mut copy);
        copy
    }

    /// The filter in words (not escaped).
    pub fn describe(&self) -> String {
        let words: Vec<String> = self
            .fields()
            .iter()
            .filter(|(k, _)| !matches!(*k, "limit" | "again" | "unreplayed"))
            .filter_map(|(k, v)| v.map(|v| format!("{} = {v}", k.replace('_', " "))))
            .collect();
        if words.is_empty() {
            "all dead letters".into()
        } else {
            words.join(", ")
        }
    }
}

/// The page for a selection with a wrong field: 400, naming the field.
pub fn invalid_page(e: FieldError) -> Response {
    html::error_page(
        StatusCode::BAD_REQUEST,
        &format!("{}: {}", e.field, e.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_mean_any_and_the_query_is_canonical() {
        let s = Selection {
            tenant: Some(" acme ".into()),
            channel: Some(String::new()),
            error_class: Some("poison".into()),
            since: Some("2026-01-02T03:04".into()),
            again: Some("on".into()),
            ..Default::default()
        };
        let f = s.filter().unwrap();
        assert_eq!(f.tenant.as_deref(), Some("acme"));
        assert_eq!(f.channel, None);
        assert!(f.since.is_some());
        assert!(s.again());
        assert_eq!(
            s.query(),
            "tenant=acme&error_class=poison&since=2026-01-02T03%3A04&again=1"
        );
        assert_eq!(
            s.describe(),
            "tenant = acme, error class = poison, since = 2026-01-02T03:04"
        );
        let bad = Selection {
            id: Some("x".into()),
            ..Default::default()
        };
        assert!(bad.filter().unwrap_err().message.contains("not a UUID"));
        assert_eq!(Selection::default().limit(50, 500), 50);
        let big = Selection {
            limit: Some("9999".into()),
            ..Default::default()
        };
        assert_eq!(big.limit(50, 500), 500);
    }
}
