//! `{{var}}` values in an email's `html` are HTML-escaped on the way through
//! the real pipeline (ingest, router, worker-email, SMTP fake); the `text`
//! part and the subject keep them as they are.

use herald::providers::config::EmailProviderKind;

use super::*;

/// The body of the MIME part of `content_type` in a raw message, decoded
/// from quoted-printable or base64 if it was sent so.
fn part(raw: &str, content_type: &str) -> String {
    let start = raw
        .find(&format!("Content-Type: {content_type}"))
        .unwrap_or_else(|| panic!("no {content_type} part in {raw}"));
    let part = &raw[start..];
    let (headers, body) = part.split_once("\r\n\r\n").expect("part headers");
    let body = body.split("\r\n--").next().expect("part body");
    let encoding = headers.to_ascii_lowercase();
    if encoding.contains("content-transfer-encoding: quoted-printable") {
        let joined = body.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&joined[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    } else if encoding.contains("content-transfer-encoding: base64") {
        use base64::Engine;
        let compact: String = body.split_whitespace().collect();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .expect("base64"),
        )
        .expect("utf-8")
    } else {
        body.to_owned()
    }
}

#[tokio::test]
async fn html_email_values_are_escaped_and_text_values_are_not() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let router = env.spawn_router().await;
    let smtp = SmtpFake::start().await;
    let worker = env
        .spawn_worker(Channel::Email, |c| {
            c.providers.email_provider = EmailProviderKind::Smtp;
            c.providers.smtp_url = Some(smtp.url().into());
            c.providers.email_from = Some("Herald <noreply@example.com>".into());
        })
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    let name = r#"<a href="http://evil.test">Ada</a>"#;
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-1",
            Some(json!({"name": name, "email": "ada@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(json!({
                "category": "receipts",
                "to": {"users": ["u-1"]},
                "content": {"email": {
                    "subject": "For {{name}}",
                    "text": "Hi {{name}}, note: {{note}}",
                    "html": "<p>Hi {{name}}, note: <b>{{note}}</b></p>"
                }},
                "data": {"note": "<script>x()</script> & 'more'"}
            })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let messages = env
        .eventually(Duration::from_secs(20), || async {
            let m = smtp.messages();
            (!m.is_empty()).then_some(m)
        })
        .await
        .expect("the email reaches the relay");
    let raw = &messages[0].data;

    let html = part(raw, "text/html");
    assert!(
        html.contains(
            "<p>Hi &lt;a href=&quot;http://evil.test&quot;&gt;Ada&lt;/a&gt;, note: \
             <b>&lt;script&gt;x()&lt;/script&gt; &amp; &#39;more&#39;</b></p>"
        ),
        "values escaped, the template's own markup kept: {html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains("<a href"),
        "{html}"
    );

    let text = part(raw, "text/plain");
    assert!(
        text.contains(
            r#"Hi <a href="http://evil.test">Ada</a>, note: <script>x()</script> & 'more'"#
        ),
        "plain text is left as is: {text}"
    );
    worker.stop().await;
    router.stop().await;
    ingest.stop().await;
}
