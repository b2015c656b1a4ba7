//! The suppression list by hand: the API (scope `manage`, normalised
//! addresses, pages), the router's `address_suppressed` even for required
//! categories, `heraldctl suppressions` and the admin page's remove button.

use std::time::Duration;

use herald::{
    db::keys::Scope,
    model::{Category, TenantId},
};
use herald_tests::{Client, TestEnv, binary, pipeline::Pipeline};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

/// The deliveries of a notification once it is routed, as (channel,
/// status, reason), sorted.
async fn routed(p: &Pipeline, id: &str) -> Vec<(String, String, Option<String>)> {
    let body = p
        .env
        .eventually(Duration::from_secs(10), || async {
            let body = p.status(id).await;
            matches!(body["status"].as_str(), Some("routed" | "completed")).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("notification {id} was not routed"));
    let mut out: Vec<_> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["channel"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
                d["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    out.sort();
    out
}

fn security_code() -> Value {
    json!({
        "category": "security",
        "priority": "high",
        "to": {"users": ["u-1"]},
        "channels": ["email", "sms"],
        "content": {"email": {"subject": "Code", "text": "123456"}, "sms": {"text": "123456"}}
    })
}

fn suppressed(reason: &str) -> Option<String> {
    Some(reason.to_owned())
}

#[tokio::test]
async fn manual_suppressions_hold_even_required_categories_until_removed() {
    let p = Pipeline::start("300ms").await;
    herald::db::tenants::set_required_categories(
        &p.env.pool,
        &TenantId::parse("acme").unwrap(),
        &[Category::parse("security").unwrap()],
    )
    .await
    .unwrap();
    p.user(
        "u-1",
        json!({"email": "Ada@Example.com", "phone": "+14155550100"}),
    )
    .await;
    let c = &p.client;

    // Added with a note; the address is stored as deliveries compare it.
    let (status, body) = c
        .json(
            Method::PUT,
            "/v1/suppressions/email/%20ADA@example.COM",
            Some(json!({"note": "asked support to stop"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["address"], "ada@example.com");
    assert_eq!(body["channel"], "email");
    assert_eq!(body["reason"], "manual");
    assert_eq!(body["source"], "api");
    assert_eq!(body["detail"], "asked support to stop");
    // Again, with no body at all: still there, now without a note.
    let resp = c
        .req(Method::PUT, "/v1/suppressions/email/ada@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = c
        .json(Method::PUT, "/v1/suppressions/sms/%2B14155550100", None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["address"], "+14155550100");

    // Bad input is a problem with the field named.
    for (path, field) in [
        ("/v1/suppressions/push/device-token-1", "channel"),
        ("/v1/suppressions/fax/123", "channel"),
        ("/v1/suppressions/email/not-an-address", "address"),
        ("/v1/suppressions/sms/0155", "address"),
    ] {
        let (status, body) = c.json(Method::PUT, path, None).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{path}: {body}");
    }
    let (status, body) = c
        .json(
            Method::PUT,
            "/v1/suppressions/email/bob@example.com",
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(status, 422, "unknown fields are refused: {body}");

    // Listed, filtered, in pages.
    let (_, all) = c.json(Method::GET, "/v1/suppressions", None).await;
    assert_eq!(all["suppressions"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["next_cursor"], Value::Null);
    let (_, email) = c
        .json(Method::GET, "/v1/suppressions?channel=email", None)
        .await;
    assert_eq!(email["suppressions"].as_array().unwrap().len(), 1);
    assert_eq!(email["suppressions"][0]["address"], "ada@example.com");
    let (_, first) = c.json(Method::GET, "/v1/suppressions?limit=1", None).await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, second) = c
        .json(
            Method::GET,
            &format!("/v1/suppressions?limit=1&cursor={}", urlencoding(&cursor)),
            None,
        )
        .await;
    assert_eq!(second["suppressions"].as_array().unwrap().len(), 1);
    assert_ne!(
        first["suppressions"][0]["address"],
        second["suppressions"][0]["address"]
    );
    let (status, _) = c
        .json(Method::GET, "/v1/suppressions?cursor=nonsense", None)
        .await;
    assert_eq!(status, 422);

    // Another tenant sees none of it; a send-only key may not look.
    let beta = Client::new(&p.ingest, &p.env.key("beta", &[Scope::Manage]).await);
    let (_, theirs) = beta.json(Method::GET, "/v1/suppressions", None).await;
    assert_eq!(theirs["suppressions"], json!([]));
    let sender = Client::new(&p.ingest, &p.env.key("acme", &[Scope::Send]).await);
    let (status, _) = sender.json(Method::GET, "/v1/suppressions", None).await;
    assert_eq!(status, 403);

    // A required category ignores opt-outs, never the suppression list.
    let id = p.send(security_code()).await;
    assert_eq!(
        routed(&p, &id).await,
        vec![
            (
                "email".into(),
                "suppressed".into(),
                suppressed("address_suppressed")
            ),
            (
                "sms".into(),
                "suppressed".into(),
                suppressed("address_suppressed")
            ),
        ]
    );

    // Removed: the next notification is made again.
    let resp = c
        .req(Method::DELETE, "/v1/suppressions/email/Ada@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, body) = c
        .json(
            Method::DELETE,
            "/v1/suppressions/email/ada@example.com",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "/problems/not-found");
    let id = p.send(security_code()).await;
    assert_eq!(
        routed(&p, &id).await,
        vec![
            ("email".into(), "pending".into(), None),
            (
                "sms".into(),
                "suppressed".into(),
                suppressed("address_suppressed")
            ),
        ]
    );
    p.stop().await;
}

/// Percent-encodes a query value.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn heraldctl(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("heraldctl"))
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn heraldctl_suppressions_add_list_and_remove() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Manage]).await;
    env.key("beta", &[Scope::Manage]).await;

    let (ok, _, err) = heraldctl(
        &env,
        &[
            "suppressions",
            "add",
            "--tenant",
            "acme",
            "--channel",
            "email",
            "--address",
            " Bob@Example.com ",
            "--note",
            "legal hold",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("bob@example.com suppressed"), "{err}");
    let (ok, _, err) = heraldctl(
        &env,
        &[
            "suppressions",
            "add",
            "--tenant",
            "beta",
            "--channel",
            "sms",
            "--address",
            "+447700900123",
        ],
    )
    .await;
    assert!(ok, "{err}");

    let (ok, out, err) = heraldctl(&env, &["suppressions", "list", "--json"]).await;
    assert!(ok, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 2, "{out}");
    let (_, out, _) = heraldctl(
        &env,
        &["suppressions", "list", "--tenant", "acme", "--json"],
    )
    .await;
    let acme: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0]["address"], "bob@example.com");
    assert_eq!(acme[0]["reason"], "manual");
    assert_eq!(acme[0]["source"], "heraldctl");
    assert_eq!(acme[0]["detail"], "legal hold");
    let (ok, out, _) = heraldctl(&env, &["suppressions", "list", "--channel", "sms"]).await;
    assert!(ok);
    assert!(
        out.contains("+447700900123") && !out.contains("bob@"),
        "{out}"
    );

    // Failures say why and exit non-zero.
    for (args, why) in [
        (
            vec![
                "suppressions",
                "add",
                "--tenant",
                "nobody",
                "--channel",
                "email",
                "--address",
                "a@example.com",
            ],
            "no tenant",
        ),
        (
            vec![
                "suppressions",
                "add",
                "--tenant",
                "acme",
                "--channel",
                "email",
                "--address",
                "nope",
            ],
            "invalid email address",
        ),
        (
            vec![
                "suppressions",
                "add",
                "--tenant",
                "acme",
                "--channel",
                "push",
                "--address",
                "tok",
            ],
            "push has no suppression list",
        ),
        (
            vec![
                "suppressions",
                "remove",
                "--tenant",
                "acme",
                "--channel",
                "sms",
                "--address",
                "+447700900123",
            ],
            "is not suppressed",
        ),
    ] {
        let (ok, _, err) = heraldctl(&env, &args).await;
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    let (ok, _, err) = heraldctl(
        &env,
        &[
            "suppressions",
            "remove",
            "--tenant",
            "acme",
            "--channel",
            "email",
            "--address",
            "BOB@example.com",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (_, out, _) = heraldctl(
        &env,
        &["suppressions", "list", "--tenant", "acme", "--json"],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out).unwrap(),
        Vec::<Value>::new()
    );
}

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

/// The value of the hidden field `name` of the first form on `page`.
fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn admin_page_lists_suppressions_and_removes_one_with_its_own_button() {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.admin_api_key = Some(ADMIN_KEY.to_owned().into()))
        .await;
    let client = Client::new(&app, &env.key("acme", &[Scope::Manage]).await);
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/suppressions/email/ada@example.com",
            Some(json!({"note": "<i>note</i>"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .get(app.url("/admin/suppressions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "signed out: to the login form");

    let page = http
        .get(app.url("/admin/suppressions?tenant=acme"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("ada@example.com"), "{page}");
    assert!(page.contains("&lt;i&gt;note&lt;/i&gt;"), "escaped: {page}");
    assert!(!page.contains("<i>note"), "{page}");
    let token = hidden(&page, "token");
    let overview = http
        .get(app.url("/admin"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        overview.contains("1 suppressed address(es)") && overview.contains("manual 1"),
        "{overview}"
    );

    // A token for another suppression (or none) removes nothing.
    for token in ["", "123.abc", token.as_str()] {
        let resp = http
            .post(app.url("/admin/suppressions/remove"))
            .bearer_auth(ADMIN_KEY)
            .form(&[
                ("tenant", "acme"),
                ("channel", "email"),
                ("address", "other@example.com"),
                ("token", token),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    let (_, list) = client.json(Method::GET, "/v1/suppressions", None).await;
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 1);

    let resp = http
        .post(app.url("/admin/suppressions/remove"))
        .bearer_auth(ADMIN_KEY)
        .form(&[
            ("tenant", "acme"),
            ("channel", "email"),
            ("address", "ada@example.com"),
            ("token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let back = resp.headers()["location"].to_str().unwrap().to_owned();
    let page = http
        .get(app.url(&back))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"removed\""), "{page}");
    assert!(page.contains("Nothing here."), "{page}");
    let (_, list) = client.json(Method::GET, "/v1/suppressions", None).await;
    assert_eq!(list["suppressions"], json!([]));
    app.stop().await;
}
