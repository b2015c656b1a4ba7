//! `{{var}}` templates. Syntax is checked at ingest; variables are filled by the
//! router from the notification's `data` and the recipient's profile.

use serde_json::Value;

/// A template error: bad syntax at ingest, or a variable missing at render time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed `{{{{` at byte {0}")]
    Unclosed(usize),
    #[error("empty or invalid variable name `{{{{{0}}}}}`")]
    BadName(String),
    #[error("missing variable `{0}`")]
    Missing(String),
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(template: &str) -> impl Iterator<Item = Result<Piece<'_>, TemplateError>> {
    let mut rest = template;
    let mut offset = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(open) = rest.find("{{") else {
            let text = rest;
            rest = "";
            return Some(Ok(Piece::Text(text)));
        };
        if open > 0 {
            let text = &rest[..open];
            rest = &rest[open..];
            offset += open;
            return Some(Ok(Piece::Text(text)));
        }
        let Some(close) = rest.find("}}") else {
            let at = offset;
            rest = "";
            return Some(Err(TemplateError::Unclosed(at)));
        };
        let name = rest[2..close].trim();
        rest = &rest[close + 2..];
        offset += close + 2;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        Some(if valid {
            Ok(Piece::Var(name))
        } else {
            Err(TemplateError::BadName(name.to_owned()))
        })
    })
}

/// Checks a template's syntax without rendering it.
pub fn check(template: &str) -> Result<(), TemplateError> {
    pieces(template).try_for_each(|p| p.map(|_| ()))
}

/// Variables a template can draw on: the notification's `data`, then the
/// recipient's profile (`name`, `locale`, ...). `data` wins on a clash so a
/// caller can override what the profile says.
pub struct Vars<'a> {
    /// The notification's `data` object.
    pub data: &'a Value,
    /// The recipient's profile fields.
    pub profile: &'a Value,
}

impl Vars<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        [self.data, self.profile].into_iter().find_map(|root| {
            let value = name
                .split('.')
                .try_fold(root, |node, part| node.get(part))?;
            match value {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        })
    }
}

/// Renders a template, failing on the first missing variable.
pub fn render(template: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces(template) {
        match piece? {
            Piece::Text(text) => out.push_str(text),
            Piece::Var(name) => match vars.lookup(name) {
                Some(value) => out.push_str(&value),
                None => return Err(TemplateError::Missing(name.to_owned())),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_from_data_then_profile() {
        let data = json!({"order_id": "A-991", "n": 3, "nested": {"x": "y"}});
        let profile = json!({"name": "Ada", "order_id": "ignored"});
        let vars = Vars {
            data: &data,
            profile: &profile,
        };
        assert_eq!(
            render(
                "Hi {{name}}, order {{ order_id }} x{{n}} {{nested.x}}",
                &vars
            )
            .unwrap(),
            "Hi Ada, order A-991 x3 y"
        );
        assert_eq!(
            render("{{nope}}", &vars),
            Err(TemplateError::Missing("nope".into()))
        );
    }

    #[test]
    fn checks_syntax() {
        assert!(check("plain").is_ok());
        assert!(check("a {{b}} c").is_ok());
        assert_eq!(check("a {{b"), Err(TemplateError::Unclosed(2)));
        assert!(matches!(check("{{ }}"), Err(TemplateError::BadName(_))));
        assert!(matches!(check("{{a b}}"), Err(TemplateError::BadName(_))));
    }
}
