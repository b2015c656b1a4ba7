//! Recipients: profile, addresses and devices.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type},
    },
};

use super::{FieldError, FieldErrors, from_value};

/// An email address, checked for the shape SMTP servers accept (`local@domain.tld`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses an address; the checks are deliberately those that make a
    /// provider refuse it outright, not full RFC 5322.
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        let bad = || Err("must be an email address such as ada@example.com".to_owned());
        if value.len() > 254 {
            return Err("must be at most 254 characters".into());
        }
        let Some((local, domain)) = value.rsplit_once('@') else {
            return bad();
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with(['.', '-'])
            && !domain.ends_with(['.', '-'])
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"@".contains(c));
        if domain_ok && local_ok {
            Ok(Self(value))
        } else {
            bad()
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for EmailAddress {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(254))
            .into()
    }
}

impl ToSchema for EmailAddress {}

/// A phone number in E.164 form: `+` then 2 to 15 digits, no leading zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Parses a number, refusing anything but strict E.164.
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        let digits = value.strip_prefix('+').unwrap_or("");
        if (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
        {
            Ok(Self(value))
        } else {
            Err("must be an E.164 number such as +14155550100".into())
        }
    }

    /// The number as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for PhoneE164 {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^\+[1-9][0-9]{1,14}$"))
            .into()
    }
}

impl ToSchema for PhoneE164 {}

string_conversions!(EmailAddress, String);
string_conversions!(PhoneE164, String);

/// A recipient's profile as stored, and the body of `PUT /v1/users/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    #[schema(max_length = 200)]
    pub name: Option<String>,
    pub email: Option<EmailAddress>,
    pub phone: Option<PhoneE164>,
    /// A language tag such as `en` or `pt-BR`.
    #[schema(max_length = 35, pattern = "^[A-Za-z0-9]{2,3}([-_][A-Za-z0-9]{2,8})*$")]
    pub locale: Option<String>,
    /// IANA time zone name, e.g. `Europe/Paris`; quiet hours are read in it.
    pub timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
}

impl Profile {
    /// Parses the body of `PUT /v1/users/{id}`.
    pub fn parse(value: Value) -> Result<Self, Vec<FieldError>> {
        let raw: RawProfile = from_value(value).map_err(|e| vec![e])?;
        let mut errors = FieldErrors::default();
        if raw.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            errors.push("name", "must be at most 200 characters");
        }
        let email = raw
            .email
            .and_then(|e| errors.check("email", EmailAddress::parse(e)));
        let phone = raw
            .phone
            .and_then(|p| errors.check("phone", PhoneE164::parse(p)));
        if let Some(locale) = &raw.locale {
            let ok = locale.len() <= 35
                && locale.split(['-', '_']).enumerate().all(|(i, part)| {
                    let len_ok = if i == 0 {
                        (2..=3).contains(&part.len())
                    } else {
                        (2..=8).contains(&part.len())
                    };
                    len_ok && part.chars().all(|c| c.is_ascii_alphanumeric())
                });
            if !ok {
                errors.push("locale", "must be a language tag such as en or pt-BR");
            }
        }
        if let Some(tz) = &raw.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            errors.push("timezone", "must be an IANA time zone such as Europe/Paris");
        }
        errors.finish(|| Profile {
            name: raw.name,
            email,
            phone,
            locale: raw.locale,
            timezone: raw.timezone,
        })
    }

    /// Template variables the profile offers (`{{name}}`, `{{locale}}`, ...).
    pub fn template_vars(&self, user_id: &str) -> Value {
        serde_json::json!({
            "user_id": user_id,
            "name": self.name,
            "email": self.email.as_ref().map(EmailAddress::as_str),
            "phone": self.phone.as_ref().map(PhoneE164::as_str),
            "locale": self.locale,
            "timezone": self.timezone,
        })
    }
}

/// A push platform, which decides the provider a device token goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Fcm,
    Apns,
}

impl Platform {
    /// Lower-case name as stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Fcm => "fcm",
            Platform::Apns => "apns",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fcm" => Ok(Platform::Fcm),
            "apns" => Ok(Platform::Apns),
            other => Err(format!("unknown platform `{other}`; expected fcm or apns")),
        }
    }
}

/// Masks an address for display and logs: `a***@example.com`, `+44*******23`,
/// `abcd…wxyz` for device tokens.
pub fn mask(destination: &str) -> String {
    if destination.is_empty() {
        return String::new();
    }
    if let Some((local, domain)) = destination.split_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = destination.chars().collect();
    if destination.starts_with('+') && chars.len() > 5 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        return format!("{head}{}{tail}", "*".repeat(chars.len() - 5));
    }
    if chars.len() > 12 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        return format!("{head}…{tail}");
    }
    "*".repeat(chars.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_addresses() {
        assert!(EmailAddress::parse("ada@example.com").is_ok());
        assert!(EmailAddress::parse("ada@localhost").is_err());
        assert!(EmailAddress::parse("a da@example.com").is_err());
        assert!(PhoneE164::parse("+14155550100").is_ok());
        assert!(PhoneE164::parse("14155550100").is_err());
        assert!(PhoneE164::parse("+0123").is_err());
    }

    #[test]
    fn profile_errors_name_fields() {
        let errors = Profile::parse(
            json!({"email": "x", "phone": "1", "timezone": "Mars/Base", "locale": "english!"}),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "phone", "locale", "timezone"]);
        assert!(Profile::parse(json!({"timezone": "Europe/Paris", "locale": "pt-BR"})).is_ok());
    }

    #[test]
    fn masks() {
        assert_eq!(mask("ada@example.com"), "a***@example.com");
        assert_eq!(mask("+14155550100"), "+14*******00");
        assert_eq!(mask("abcdefghijklmnopqrstuvwxyz"), "abcd…wxyz");
    }
}
