//! Server-rendered HTML for the admin pages: escaping, the page frame and a
//! few building blocks. Every value that did not come from this file goes
//! through [`esc`]; there is no other way into the page.

use std::fmt::Write;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string component (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Small and inline: the pages need no stylesheet request, and the content
/// security policy allows no other source.
const CSS: &str = "
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2430;background:#f4f6f9}
header{background:#1f2a44;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:24px}
header b{font-size:16px;letter-spacing:.5px}
header a{color:#cfd8ec;text-decoration:none}header a:hover,header a.on{color:#fff}
header form{margin-left:auto}
main{max-width:1200px;margin:20px auto;padding:0 24px}
h1{font-size:20px;margin:4px 0 16px}h2{font-size:16px;margin:0 0 10px}
section{background:#fff;border:1px solid #dde3ec;border-radius:6px;padding:16px;margin-bottom:18px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #edf0f5;vertical-align:top}
th{font-size:12px;text-transform:uppercase;color:#5b6576;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#f8fafd}
a{color:#2457c5}
pre{background:#f6f8fb;border:1px solid #e3e8ef;padding:10px;overflow:auto;max-height:420px;font-size:12px}
dl{display:grid;grid-template-columns:170px 1fr;gap:4px 12px;margin:0}dt{color:#5b6576}dd{margin:0;word-break:break-all}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-end}
label{display:flex;flex-direction:column;font-size:12px;color:#5b6576;gap:2px}
label.check{flex-direction:row;align-items:center;gap:6px;padding-bottom:7px;font-size:13px}
input,select{font:inherit;padding:5px 7px;border:1px solid #c5cdd9;border-radius:4px;min-width:130px}
input[type=checkbox]{min-width:0;padding:0;margin:0}
button,.button{font:inherit;padding:6px 14px;border-radius:4px;border:1px solid #2457c5;background:#2457c5;color:#fff;cursor:pointer;text-decoration:none;display:inline-block}
button.quiet{background:transparent;border-color:#8ea2c8;color:#cfd8ec;padding:3px 10px}
.danger{background:#c0392b;border-color:#c0392b}
.muted{color:#6b7586}.err{color:#b3261e}.ok{color:#1e7d32}
.tag{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;background:#e8edf6}
.tag.replayed,.tag.sent{background:#dff3e3}.tag.failed,.tag.dead{background:#fbe0de}
.bar{display:flex;height:12px;min-width:2px;border-radius:2px;overflow:hidden}
.bar span{display:block;height:100%}
.notice{padding:10px 12px;border-radius:4px;background:#fff6da;border:1px solid #f1dc9a;margin-bottom:14px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.chart td:last-child,.chart th:last-child{width:50%}
.chart td{padding-top:3px;padding-bottom:3px}
";

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    DeadLetters,
    None,
}

/// A complete page: header with navigation (and log-out when signed in),
/// then `body`.
pub fn page(title: &str, nav: Nav, signed_in: bool, body: &str) -> String {
    let link = |href: &str, label: &str, this: Nav| {
        let class = if nav == this { " class=\"on\"" } else { "" };
        format!("<a href=\"{href}\"{class}>{label}</a>")
    };
    let menu = if signed_in {
        format!(
            "{}{}<form method=\"post\" action=\"/admin/logout\"><button class=\"quiet\" type=\"submit\">Log out</button></form>",
            link("/admin", "Overview", Nav::Overview),
            link("/admin/dead-letters", "Dead letters", Nav::DeadLetters),
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Herald admin</title><style>{CSS}</style></head>\
         <body><header><b>Herald</b>{menu}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

/// An HTML response with the admin pages' security headers: never cached,
/// never framed, no script or outside resource of any kind.
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><section><p class=\"err\">{}</p><p><a href=\"/admin\">Back to the overview</a></p></section>",
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(message)
    );
    respond(status, page("Error", Nav::None, true, &body))
}

/// A table: header cells (a leading `#` right-aligns a numeric column) and
/// rows of already-escaped cell HTML.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let numeric: Vec<bool> = headers.iter().map(|h| h.starts_with('#')).collect();
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let (class, label) = match h.strip_prefix('#') {
            Some(label) => (" class=\"n\"", label),
            None => ("", *h),
        };
        let _ = write!(out, "<th{class}>{}</th>", esc(label));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.get(i) == Some(&true) {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// A time as the pages show it (UTC).
pub fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Cuts text to `max` characters for a table cell.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let head: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        let t = table(&["name", "#count"], &[vec![esc("<b>"), "3".into()]]);
        assert!(t.contains("<td>&lt;b&gt;</td><td class=\"n\">3</td>"));
    }
}
