//! Wrong admin keys lock out the address that sends them, not every admin.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_guessing_client_is_locked_out_alone() {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.admin_api_key = Some(ADMIN_KEY.to_owned().into()))
        .await;
    let guesser = client_from([127, 0, 0, 2]);
    let mut statuses = Vec::new();
    while statuses.len() < 200 && statuses.last() != Some(&429) {
        let resp = guesser
            .get(app.url("/admin/api/dead-letters"))
            .bearer_auth(format!("guess-{}", statuses.len()))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    let resp = guesser
        .get(app.url("/admin/api/dead-letters"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        429,
        "even the right key waits at the guesser"
    );
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // The login form refuses the guesser too.
    let resp = guesser
        .post(app.url("/admin/login"))
        .form(&[("key", "another-guess"), ("next", "/admin")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);

    // Another admin, from another address, at the same moment: in.
    let admin = client_from([127, 0, 0, 3]);
    let resp = admin
        .get(app.url("/admin/api/dead-letters"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = admin
        .post(app.url("/admin/login"))
        .form(&[("key", ADMIN_KEY), ("next", "/admin")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "signed in");
    assert!(resp.headers().contains_key("set-cookie"));
    // Their own typo is answered as a typo, not a lockout.
    let resp = admin
        .get(app.url("/admin/api/dead-letters"))
        .bearer_auth("typo")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    app.stop().await;
}
