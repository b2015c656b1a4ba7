//! `{{var}}` templates. Syntax is checked at ingest; variables are filled by the
//! router from the notification's `data` and the recipient's profile.
//!
//! What a value becomes depends on what the template is ([`Markup`]): in
//! HTML a value is text, escaped by the renderer, so a user named
//! `<a href="...">` or a `data` value holding a `<script>` cannot add markup
//! to an email; in plain text (subjects, text bodies, push, SMS) it is left
//! as it is, since escaping there would show `&amp;` to the reader.

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

/// What a template is written in, which decides how values are written
/// into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Plain text: values go in as they are.
    Text,
    /// HTML: values are escaped, so they show as text and never become
    /// markup. The template's own markup is the caller's and is kept.
    Html,
}

impl Markup {
    fn push_value(self, out: &mut String, value: &str) {
        match self {
            Markup::Text => out.push_str(value),
            Markup::Html => {
                // The five characters that can end a text node or a quoted
                // attribute value; the rest of Unicode is safe in UTF-8 HTML.
                for c in value.chars() {
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '"' => out.push_str("&quot;"),
                        '\'' => out.push_str("&#39;"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
}

/// Renders a template written in `markup`, failing on the first missing
/// variable.
pub fn render(template: &str, vars: &Vars<'_>, markup: Markup) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces(template) {
        match piece? {
            Piece::Text(text) => out.push_str(text),
            Piece::Var(name) => match vars.lookup(name) {
                Some(value) => markup.push_value(&mut out, &value),
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
                &vars,
                Markup::Text
            )
            .unwrap(),
            "Hi Ada, order A-991 x3 y"
        );
        assert_eq!(
            render("{{nope}}", &vars, Markup::Text),
            Err(TemplateError::Missing("nope".into()))
        );
    }

    #[test]
    fn html_escapes_values_but_not_the_template() {
        let data = json!({"x": "<script>x()</script>", "q": "it's \"5\" & more", "n": 3});
        let profile = json!({"name": "<a href=\"http://evil.test\">Ada</a>"});
        let vars = Vars {
            data: &data,
            profile: &profile,
        };
        assert_eq!(
            render(
                "<p title=\"{{q}}\">Hi {{name}}</p>{{x}}{{n}}",
                &vars,
                Markup::Html
            )
            .unwrap(),
            "<p title=\"it&#39;s &quot;5&quot; &amp; more\">Hi &lt;a href=&quot;http://evil.test&quot;&gt;Ada&lt;/a&gt;</p>\
             &lt;script&gt;x()&lt;/script&gt;3"
        );
        // Plain text keeps every character: escaping there would show `&lt;`.
        assert_eq!(
            render("Hi {{name}} {{x}}", &vars, Markup::Text).unwrap(),
            "Hi <a href=\"http://evil.test\">Ada</a> <script>x()</script>"
        );
        // Nothing to escape: the same text either way.
        assert_eq!(
            render("{{n}} é", &vars, Markup::Html).unwrap(),
            render("{{n}} é", &vars, Markup::Text).unwrap()
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
