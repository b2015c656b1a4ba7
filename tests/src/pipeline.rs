//! The whole pipeline in one test process: ingest and the router started
//! for real on a [`TestEnv`], a client with a send+manage key, and the
//! worker settings that point a channel at a provider fake.

use std::time::Duration;

use herald::{
    db::keys::Scope,
    delivery::WorkerConfig,
    providers::config::{PushProviderKind, SmsProviderKind},
};
use reqwest::Method;
use serde_json::Value;

use crate::{
    Client, Spawned, TestEnv,
    fakes::{fcm::FcmFake, twilio::TwilioFake},
};

/// Ingest, the router and a client of tenant `acme`.
pub struct Pipeline {
    pub env: TestEnv,
    pub ingest: Spawned,
    pub router: Spawned,
    pub client: Client,
}

impl Pipeline {
    /// A fresh environment with retry tiers `schedule`, ingest and router.
    pub async fn start(schedule: &str) -> Self {
        Self::on(TestEnv::with_schedule(schedule).await).await
    }

    /// Ingest and router on `env` as it is configured (its shards, say).
    pub async fn on(env: TestEnv) -> Self {
        let ingest = env.spawn_ingest().await;
        let router = env.spawn_router().await;
        let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
        let client = Client::new(&ingest, &key);
        Self {
            env,
            ingest,
            router,
            client,
        }
    }

    /// Creates or replaces user `id`.
    pub async fn user(&self, id: &str, profile: Value) {
        let (status, body) = self
            .client
            .json(Method::PUT, &format!("/v1/users/{id}"), Some(profile))
            .await;
        assert!(status == 200 || status == 201, "{body}");
    }

    /// Registers a device token for user `id`.
    pub async fn device(&self, id: &str, token: &str, platform: &str) {
        let (status, body) = self
            .client
            .json(
                Method::PUT,
                &format!("/v1/users/{id}/devices/{token}"),
                Some(serde_json::json!({ "platform": platform })),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
    }

    /// Sends a notification and returns its id (asserting 202).
    pub async fn send(&self, body: Value) -> String {
        let (status, resp) = self
            .client
            .json(Method::POST, "/v1/notifications", Some(body))
            .await;
        assert_eq!(status, 202, "{resp}");
        resp["id"].as_str().expect("id").to_owned()
    }

    /// The status document of a notification.
    pub async fn status(&self, id: &str) -> Value {
        self.client
            .json(Method::GET, &format!("/v1/notifications/{id}"), None)
            .await
            .1
    }

    /// Waits until every delivery of the notification is settled.
    pub async fn settled(&self, id: &str, timeout: Duration) -> Value {
        self.env
            .eventually(timeout, || async {
                let body = self.status(id).await;
                (body["status"] == "completed").then_some(body)
            })
            .await
            .unwrap_or_else(|| panic!("notification {id} did not complete"))
    }

    /// Stops ingest and the router gracefully.
    pub async fn stop(self) {
        self.ingest.stop().await;
        self.router.stop().await;
    }
}

/// Worker settings sending SMS through the Twilio fake.
pub fn twilio(fake: &TwilioFake) -> impl FnOnce(&mut WorkerConfig) + '_ {
    move |c| {
        c.providers.sms_provider = SmsProviderKind::Twilio;
        c.providers.twilio_base_url = fake.base_url();
        c.providers.twilio_account_sid = Some(fake.account_sid().to_owned());
        c.providers.twilio_auth_token = Some(fake.auth_token().to_owned().into());
        c.providers.twilio_from = Some("+15005550006".into());
    }
}

/// Worker settings sending push through the FCM fake.
pub fn fcm(fake: &FcmFake) -> impl FnOnce(&mut WorkerConfig) + '_ {
    move |c| {
        let pc = &mut c.providers;
        pc.push_provider = vec![PushProviderKind::Fcm];
        pc.fcm_base_url = fake.base_url();
        pc.fcm_token_url = Some(fake.token_url());
        pc.fcm_project_id = Some(fake.project_id().to_owned());
        pc.fcm_credentials_file = Some(fake.credentials_file());
    }
}
