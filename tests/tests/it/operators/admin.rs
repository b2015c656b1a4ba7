//! The admin pages: the JSON API, escaping, and the pages in a real browser.

use super::*;

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

#[tokio::test]
async fn admin_api_lists_and_replays_and_is_closed_without_a_key() {
    let env = TestEnv::new().await;
    let closed = env.spawn_ingest().await;
    let resp = reqwest::get(closed.url("/admin")).await.unwrap();
    assert_eq!(resp.status(), 404, "no admin key, no admin pages");
    closed.stop().await;

    let app = env
        .spawn_ingest_with(|c| c.admin_api_key = Some(ADMIN_KEY.to_owned().into()))
        .await;
    let (msg, id) = dead_delivery(&env, "acme", "dead").await;
    let evil = seed(&env, |r| {
        r.last_error = "<script>alert('x')</script>".into()
    })
    .await;
    let http = reqwest::Client::new();

    let resp = http
        .get(app.url("/admin/api/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = http
        .get(app.url("/admin/api/dead-letters"))
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let page = http.get(app.url("/admin")).send().await.unwrap();
    assert!(
        page.url().path().starts_with("/admin/login"),
        "{}",
        page.url()
    );

    let list: Value = http
        .get(app.url("/admin/api/dead-letters?tenant=acme&channel=sms"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["id"], id.to_string());
    let resp = http
        .get(app.url("/admin/api/dead-letters?since=whenever"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "since");

    let replay = |body: Value| {
        http.post(app.url("/admin/api/dead-letters/replay"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    let dry: Value = replay(json!({"id": id, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry["results"][0]["outcome"], "would_replay", "{dry}");
    assert_eq!(delivery_row(&env, &msg).await.0, "dead");
    let done: Value = replay(json!({"id": id}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["replayed"], 1, "{done}");
    assert!(replayed_at(&env, id).await.is_some());
    let resp = replay(json!({"id": id, "colour": "red"})).await.unwrap();
    assert_eq!(resp.status(), 400, "unknown fields are refused");

    // Every value is escaped on the pages.
    let html = http
        .get(app.url(&format!("/admin/dead-letters/{evil}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // maud escapes `&`, `<`, `>` and `"`; every attribute is double-quoted,
    // so an apostrophe is harmless as it is.
    assert!(
        html.contains("&lt;script&gt;alert('x')&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"));
    app.stop().await;
}

#[tokio::test]
async fn admin_page_in_a_browser_signs_in_filters_and_replays() {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.admin_api_key = Some(ADMIN_KEY.to_owned().into()))
        .await;
    let (msg, id) = dead_delivery(&env, "acme", "dead").await;
    for (tenant, class) in [("beta", "invalid"), ("gamma", "poison")] {
        seed(&env, |r| {
            r.tenant_id = Some(tenant.into());
            r.error_class = class.into();
            r.last_error = format!("{class}: something <odd> & broken");
        })
        .await;
    }
    let started = std::time::Instant::now();
    let browser = Browser::start().await;
    let artifacts = herald_tests::browser::artifacts_dir();

    // Signing in on the form lands on the page first asked for.
    browser.goto(&app.url("/admin/dead-letters")).await;
    assert!(browser.url().await.contains("/admin/login"));
    let key = browser.find("#key").await;
    browser.fill(&key, "not the key").await;
    browser.click_to_leave("#login").await;
    assert!(
        browser
            .text_of("#login-error")
            .await
            .contains("not the admin key")
    );
    let key = browser.find("#key").await;
    browser.fill(&key, ADMIN_KEY).await;
    browser.click_to_leave("#login").await;
    assert!(
        browser.text_of("#count").await.starts_with("3 match"),
        "{}",
        browser.url().await
    );

    browser.goto(&app.url("/admin")).await;
    assert!(browser.title().await.starts_with("Overview"));
    let queues = browser.text_of("#queues").await;
    assert!(
        queues.contains(&env.names().delivery_queue(Channel::Sms, Lane::High)),
        "{queues}"
    );
    assert!(
        browser
            .text_of("#dead-letter-classes")
            .await
            .contains("timeout")
    );
    browser
        .screenshot(&artifacts.join("admin-overview.png"))
        .await;

    // Filter by tenant, open the one left.
    browser.goto(&app.url("/admin/dead-letters")).await;
    browser
        .screenshot(&artifacts.join("admin-dead-letters.png"))
        .await;
    let tenant = browser.find("input[name=tenant]").await;
    browser.fill(&tenant, "acme").await;
    browser.click_to_leave("#apply").await;
    let count = browser.text_of("#count").await;
    assert!(count.starts_with("1 match tenant = acme"), "{count}");
    browser.click_to_leave("a.open").await;
    assert_eq!(browser.text_of("#error-class").await, "timeout");
    assert!(
        browser
            .text_of("#payload")
            .await
            .contains(&msg.delivery_id.to_string())
    );
    browser
        .screenshot(&artifacts.join("admin-dead-letter.png"))
        .await;

    // Replay it through the confirmation step.
    browser.click_to_leave("#replay").await;
    assert_eq!(browser.text_of("#will-replay").await, "1");
    browser
        .screenshot(&artifacts.join("admin-replay-confirm.png"))
        .await;
    browser.click_to_leave("#confirm-replay").await;
    let summary = browser.text_of("#summary").await;
    assert!(
        summary.contains("1 replayed") && summary.contains("0 failed"),
        "{summary}"
    );
    browser
        .screenshot(&artifacts.join("admin-replay-result.png"))
        .await;

    assert!(replayed_at(&env, id).await.is_some());
    assert_eq!(delivery_row(&env, &msg).await, ("pending".into(), 0));
    // Back through the router, which routes it again for its user.
    let queue = env.names().route_queue(Lane::High);
    assert_eq!(env.queue_depth(&queue).await, 1);

    // The list shows it replayed; replaying the same selection again finds nothing.
    browser.goto(&app.url("/admin/dead-letters")).await;
    browser.find("span.tag.replayed").await;
    browser
        .screenshot(&artifacts.join("admin-dead-letters.png"))
        .await;
    browser
        .goto(&app.url(&format!("/admin/replay?id={id}")))
        .await;
    browser.find("#nothing").await;
    browser.quit().await;
    eprintln!("browser test took {:?}", started.elapsed());
    app.stop().await;
}
