//! A recipient's preferences: channel and category opt-outs and quiet hours.

use std::collections::BTreeMap;

use chrono::NaiveTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Category, Channel, FieldError, FieldErrors, from_value};

/// A daily window in the recipient's time zone during which `normal` and
/// `bulk` deliveries are held. It may wrap midnight (`22:00`-`07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuietHours {
    /// `HH:MM`, 24-hour clock.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: NaiveTime,
    /// `HH:MM`, 24-hour clock; before `start` when the window wraps midnight.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end: NaiveTime,
}

mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map_err(|_| D::Error::custom("must be a time of day such as 22:00"))
    }
}

/// Stored preferences. Absent entries mean "allowed". Also the body of
/// `PUT /v1/users/{id}/preferences` and, with every channel listed, the
/// answer of both its `PUT` and `GET`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Preferences {
    #[serde(default)]
    pub channels: BTreeMap<Channel, bool>,
    #[serde(default)]
    pub categories: BTreeMap<Category, BTreeMap<Channel, bool>>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreferences {
    #[serde(default)]
    channels: BTreeMap<String, bool>,
    #[serde(default)]
    categories: BTreeMap<String, BTreeMap<String, bool>>,
    #[serde(default)]
    quiet_hours: Option<QuietHours>,
}

impl Preferences {
    /// Parses the body of `PUT /v1/users/{id}/preferences`.
    pub fn parse(value: Value) -> Result<Self, Vec<FieldError>> {
        let raw: RawPreferences = from_value(value).map_err(|e| vec![e])?;
        let mut errors = FieldErrors::default();
        let mut channels = BTreeMap::new();
        for (name, allowed) in raw.channels {
            if let Some(channel) = errors.check(format!("channels.{name}"), name.parse::<Channel>())
            {
                channels.insert(channel, allowed);
            }
        }
        let mut categories = BTreeMap::new();
        for (name, per_channel) in raw.categories {
            let Some(category) =
                errors.check(format!("categories.{name}"), Category::parse(name.clone()))
            else {
                continue;
            };
            let mut map = BTreeMap::new();
            for (ch, allowed) in per_channel {
                if let Some(channel) =
                    errors.check(format!("categories.{name}.{ch}"), ch.parse::<Channel>())
                {
                    map.insert(channel, allowed);
                }
            }
            categories.insert(category, map);
        }
        if let Some(q) = raw.quiet_hours
            && q.start == q.end
        {
            errors.push("quiet_hours", "start and end must differ");
        }
        errors.finish(|| Preferences {
            channels,
            categories,
            quiet_hours: raw.quiet_hours,
        })
    }

    /// Whether the recipient allows `category` on `channel`. A category
    /// setting overrides the channel-wide one.
    pub fn allows(&self, category: &Category, channel: Channel) -> bool {
        if let Some(allowed) = self.categories.get(category).and_then(|m| m.get(&channel)) {
            return *allowed;
        }
        self.channels.get(&channel).copied().unwrap_or(true)
    }

    /// The effective preferences: every channel listed with its value.
    pub fn effective(&self) -> Preferences {
        Preferences {
            channels: Channel::ALL
                .iter()
                .map(|c| (*c, self.channels.get(c).copied().unwrap_or(true)))
                .collect(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn category_overrides_channel() {
        let prefs = Preferences::parse(json!({
            "channels": {"sms": false},
            "categories": {"marketing": {"email": false, "sms": true}},
            "quiet_hours": {"start": "22:00", "end": "07:00"}
        }))
        .unwrap();
        let marketing = Category::parse("marketing").unwrap();
        let orders = Category::parse("orders").unwrap();
        assert!(!prefs.allows(&marketing, Channel::Email));
        assert!(prefs.allows(&marketing, Channel::Sms));
        assert!(!prefs.allows(&orders, Channel::Sms));
        assert!(prefs.allows(&orders, Channel::Push));
    }

    #[test]
    fn rejects_bad_fields() {
        let errors = Preferences::parse(json!({
            "channels": {"fax": false},
            "quiet_hours": {"start": "25:00", "end": "07:00"}
        }))
        .unwrap_err();
        assert_eq!(errors[0].field, "quiet_hours.start");
        let errors = Preferences::parse(json!({"channels": {"fax": false}})).unwrap_err();
        assert_eq!(errors[0].field, "channels.fax");
    }
}
