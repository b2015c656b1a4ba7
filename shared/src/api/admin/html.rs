//! Server-rendered HTML for the admin pages: the page frame and a few
//! building blocks, written with maud, which escapes every value it splices
//! in: there is no way into a page but through its templates.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Cuts text to `max` characters for a table cell.
pub use crate::text::cut;

/// What a query-string component keeps as is: the unreserved characters of
/// RFC 3986. Everything else is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query-string component.
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A query string of `pairs`, each value URL-encoded; absent ones left out.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", url_encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

/// A filter's value from the query string: trimmed, `None` when empty.
pub fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A filter form's `select` of `name`: "any" (empty), then `options`.
pub fn choice(label: &str, name: &str, options: &[&str], chosen: Option<&str>) -> Markup {
    html! {
        label { (label) select name=(name) {
            option value="" selected[chosen.is_none()] { "any" }
            @for o in options {
                option value=(o) selected[Some(*o) == chosen] { (o) }
            }
        } }
    }
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
    Suppressions,
    Webhooks,
    None,
}

/// A complete page: header with navigation (and log-out when signed in),
/// then `body`.
pub fn page(title: &str, nav: Nav, signed_in: bool, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) " · Herald admin" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    b { "Herald" }
                    @if signed_in {
                        (link("/admin", "Overview", Nav::Overview))
                        (link("/admin/dead-letters", "Dead letters", Nav::DeadLetters))
                        (link("/admin/suppressions", "Suppressions", Nav::Suppressions))
                        (link("/admin/webhooks", "Webhooks", Nav::Webhooks))
                        form method="post" action="/admin/logout" {
                            button.quiet type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An HTML response with the admin pages' security headers: never cached,
/// never framed, no script or outside resource of any kind.
pub fn respond(status: StatusCode, page: Markup) -> Response {
    let mut response = (status, page.into_string()).into_response();
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
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        section {
            p.err { (message) }
            p { a href="/admin" { "Back to the overview" } }
        }
    };
    respond(status, page("Error", Nav::None, true, body))
}

/// A table: header cells (a leading `#` right-aligns a numeric column) and
/// rows of cells.
pub fn table(headers: &[&str], rows: &[Vec<Markup>]) -> Markup {
    let numeric = |i: usize| headers.get(i).is_some_and(|h| h.starts_with('#'));
    html! {
        table {
            thead { tr {
                @for (i, h) in headers.iter().enumerate() {
                    th class=[numeric(i).then_some("n")] { (h.trim_start_matches('#')) }
                }
            } }
            tbody {
                @for row in rows {
                    tr { @for (i, cell) in row.iter().enumerate() {
                        td class=[numeric(i).then_some("n")] { (cell) }
                    } }
                }
            }
        }
    }
}

/// A list page's filter form: its `fields`, then Filter and a Clear link
/// back to the unfiltered `path`.
pub fn filters(path: &str, fields: Markup) -> Markup {
    html! {
        form.filters method="get" action=(path) id="filters" {
            (fields)
            button type="submit" id="apply" { "Filter" }
            " "
            a href=(path) { "Clear" }
        }
    }
}

/// A list page's results: `count` (what the list holds), the table of
/// `rows` (or "Nothing here."), and a link to the next page of `path` when
/// there is one (`next`: its query, see [`next_page`]).
pub fn results(
    path: &str,
    count: Markup,
    headers: &[&str],
    rows: &[Vec<Markup>],
    next: Option<String>,
) -> Markup {
    html! {
        section id="results" {
            p id="count" { (count) }
            @if rows.is_empty() {
                p.muted { "Nothing here." }
            } @else {
                (table(headers, rows))
            }
            @if let Some(next) = next {
                p { a href={ (path) "?" (next) } { "Next page" } }
            }
        }
    }
}

/// The query of the page after `rows` when they fill a page of `page`
/// rows (`query` of the last row, the keyset to continue after); `None` on
/// the last page.
pub fn next_page<T>(rows: &[T], page: i64, query: impl FnOnce(&T) -> String) -> Option<String> {
    rows.last().filter(|_| rows.len() as i64 == page).map(query)
}

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> Markup {
    html! { input type="hidden" name=(name) value=(value); }
}

/// A list row's button: a form posting `fields`, and the `token` signed for
/// exactly them, to `action`; the button has `class` and says `label`.
pub fn action_button(
    action: &str,
    fields: &[(&str, &str)],
    token: &str,
    class: &str,
    label: &str,
) -> Markup {
    html! {
        form method="post" action=(action) {
            @for (name, value) in fields { (hidden(name, value)) }
            (hidden("token", token))
            button class=(class) type="submit" { (label) }
        }
    }
}

/// After a button's action: the list at `path` again, filtered to `tenant`,
/// with the `notice` field (its name, what was done) to say so at the top.
pub fn back_to_list(path: &str, tenant: &str, notice: (&str, &str)) -> Response {
    let query = query(&[("tenant", Some(tenant)), (notice.0, Some(notice.1))]);
    Redirect::to(&format!("{path}?{query}")).into_response()
}

/// A time as the pages show it (UTC).
pub fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_components_encoded() {
        let t = table(
            &["name", "#count"],
            &[vec![html! { (r#"<b a="'">"#) }, html! { (3) }]],
        );
        assert!(
            t.into_string()
                .contains("<td>&lt;b a=&quot;'&quot;&gt;</td><td class=\"n\">3</td>")
        );
        assert!(
            hidden("n", "\"><script>")
                .into_string()
                .contains("value=\"&quot;&gt;&lt;script&gt;\"")
        );
        assert_eq!(url_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
    }

    #[test]
    fn an_action_button_renders_as_a_hand_written_form() {
        let written = html! {
            form method="post" action="/admin/x" {
                (hidden("id", "a&b"))
                (hidden("token", "t"))
                button.danger.remove type="submit" { "Remove" }
            }
        };
        assert_eq!(
            action_button("/admin/x", &[("id", "a&b")], "t", "danger remove", "Remove")
                .into_string(),
            written.into_string()
        );
    }
}
