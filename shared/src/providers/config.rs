//! Provider settings (`PUSH_PROVIDER`, `SMTP_URL`, `TWILIO_*` ...) and the
//! [`ProviderSet`] a channel worker sends through, built from them at startup
//! so that a missing setting stops the worker with its name, not the first
//! delivery.

use std::{convert::Infallible, fmt, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use secrecy::{ExposeSecret, SecretString};

pub use super::set::{ProviderSet, Unconfigured};
use super::{
    Provider,
    apns::{self, ApnsKey, ApnsProvider},
    fcm::{self, FcmProvider, ServiceAccount},
    http_email::HttpEmailProvider,
    log::LogProvider,
    sendgrid::{self, SendGridProvider},
    smtp::SmtpProvider,
    twilio::{self, TwilioProvider},
};
use crate::{config::redact_url, model::Channel};

/// A push provider. Several may be chosen: a device's platform picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushProviderKind {
    /// Firebase Cloud Messaging (Android, and iOS apps using FCM).
    Fcm,
    /// Apple Push Notification service.
    Apns,
    /// Log instead of sending.
    Log,
}

/// The email provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmailProviderKind {
    /// An SMTP relay (`SMTP_URL`).
    Smtp,
    /// An HTTP email API (`EMAIL_HTTP_URL`).
    Http,
    /// SendGrid's v3 Mail Send API (`SENDGRID_API_KEY`), whose Event Webhook
    /// ingest takes receipts from.
    Sendgrid,
    /// Log instead of sending.
    Log,
}

impl EmailProviderKind {
    /// The value that selects it (`smtp`, `http`, `log`).
    fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Http => "http",
            Self::Sendgrid => "sendgrid",
            Self::Log => "log",
        }
    }
}

/// The SMS provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmsProviderKind {
    /// Twilio's Messages API.
    Twilio,
    /// Log instead of sending.
    Log,
}

fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}

/// Every provider setting. Only those of the providers a channel uses are
/// required, and only when that channel's worker starts.
///
/// Secrets (`SMTP_URL`, whose user info may hold a password,
/// `EMAIL_HTTP_URL`, `EMAIL_HTTP_TOKEN`, `TWILIO_AUTH_TOKEN`) are
/// [`SecretString`]s or redacted in `Debug`, and `--help` never prints their
/// values (`hide_env_values`). Key files are named by path, never inlined.
#[derive(clap::Args, Clone)]
pub struct ProviderConfig {
    /// Push providers: `fcm`, `apns`, `log`, or a list such as `fcm,apns`.
    /// With a list, a device's platform picks its provider; `log` in a list
    /// takes the platforms no other provider covers.
    #[arg(
        long,
        env = "PUSH_PROVIDER",
        value_delimiter = ',',
        default_value = "log"
    )]
    pub push_provider: Vec<PushProviderKind>,
    /// FCM API base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = fcm::DEFAULT_BASE_URL)]
    pub fcm_base_url: String,
    /// OAuth2 token endpoint; default: the credentials file's `token_uri`.
    #[arg(long, env = "FCM_TOKEN_URL")]
    pub fcm_token_url: Option<String>,
    /// Firebase project id; default: the credentials file's `project_id`.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,
    /// Service-account credentials JSON file.
    #[arg(long, env = "FCM_CREDENTIALS_FILE")]
    pub fcm_credentials_file: Option<PathBuf>,
    /// APNs base URL (Apple's sandbox is https://api.sandbox.push.apple.com).
    #[arg(long, env = "APNS_BASE_URL", default_value = apns::DEFAULT_BASE_URL)]
    pub apns_base_url: String,
    /// APNs signing key, the `.p8` file Apple issues.
    #[arg(long, env = "APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    /// Id of the APNs signing key.
    #[arg(long, env = "APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// Apple developer team id.
    #[arg(long, env = "APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// The app's bundle id.
    #[arg(long, env = "APNS_TOPIC")]
    pub apns_topic: Option<String>,
    /// Email provider: `smtp`, `http`, `sendgrid` or `log`.
    #[arg(long, env = "EMAIL_PROVIDER", default_value = "log")]
    pub email_provider: EmailProviderKind,
    /// A second email provider (`smtp` or `http`), used while the first
    /// one's circuit is open. Both must be configured.
    #[arg(long, env = "EMAIL_FAILOVER_PROVIDER")]
    pub email_failover_provider: Option<EmailProviderKind>,
    /// SMTP relay: `smtp://host:port`, `smtp://host?tls=required`, `smtps://user:pass@host`.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = secret)]
    pub smtp_url: Option<SecretString>,
    /// Most SMTP connections (parallel sessions) this worker keeps open to
    /// the relay. Every email is one session of several round trips, so
    /// this bounds the email rate; keep it under the relay's own limit.
    #[arg(long, env = "SMTP_POOL_SIZE", default_value_t = 16)]
    pub smtp_pool_size: u32,
    /// PEM file of certificate authorities to trust for the relay's TLS, in
    /// addition to the system's (a relay with a private CA).
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// Sender of every email, `noreply@example.com` or `Name <noreply@example.com>`.
    #[arg(long, env = "EMAIL_FROM")]
    pub email_from: Option<String>,
    /// Endpoint of the HTTP email API. Some services take their key in the
    /// URL, so its value is hidden like a secret's.
    #[arg(long, env = "EMAIL_HTTP_URL", hide_env_values = true)]
    pub email_http_url: Option<String>,
    /// Bearer token of the HTTP email API.
    #[arg(
        long,
        env = "EMAIL_HTTP_TOKEN",
        hide_env_values = true,
        value_parser = secret
    )]
    pub email_http_token: Option<SecretString>,
    /// SendGrid API base URL.
    #[arg(long, env = "SENDGRID_BASE_URL", default_value = sendgrid::DEFAULT_BASE_URL)]
    pub sendgrid_base_url: String,
    /// SendGrid API key (Mail Send permission).
    #[arg(
        long,
        env = "SENDGRID_API_KEY",
        hide_env_values = true,
        value_parser = secret
    )]
    pub sendgrid_api_key: Option<SecretString>,
    /// Public base URL of ingest, e.g. `https://herald.example.com`: each
    /// SMS asks Twilio for status callbacks there. Unset: none are asked for.
    #[arg(long, env = "RECEIPTS_BASE_URL")]
    pub receipts_base_url: Option<String>,
    /// SMS provider: `twilio` or `log`.
    #[arg(long, env = "SMS_PROVIDER", default_value = "log")]
    pub sms_provider: SmsProviderKind,
    /// Twilio API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = twilio::DEFAULT_BASE_URL)]
    pub twilio_base_url: String,
    /// Twilio account SID (`AC…`).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true,
        value_parser = secret
    )]
    pub twilio_auth_token: Option<SecretString>,
    /// Sender number (E.164) or Messaging Service SID (`MG…`).
    #[arg(long, env = "TWILIO_FROM")]
    pub twilio_from: Option<String>,
    /// Longest wait for one provider request (connect and answer). Ten
    /// seconds is well past a healthy provider's slowest answer, and short
    /// enough that a hung one costs a retry, not a stalled worker.
    #[arg(long, env = "PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,
}

impl Default for ProviderConfig {
    /// The embedded default: `log` everywhere, providers' own endpoints.
    fn default() -> Self {
        Self {
            push_provider: vec![PushProviderKind::Log],
            fcm_base_url: fcm::DEFAULT_BASE_URL.into(),
            fcm_token_url: None,
            fcm_project_id: None,
            fcm_credentials_file: None,
            apns_base_url: apns::DEFAULT_BASE_URL.into(),
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            email_provider: EmailProviderKind::Log,
            email_failover_provider: None,
            smtp_url: None,
            smtp_pool_size: 16,
            smtp_ca_file: None,
            email_from: None,
            email_http_url: None,
            email_http_token: None,
            sendgrid_base_url: sendgrid::DEFAULT_BASE_URL.into(),
            sendgrid_api_key: None,
            receipts_base_url: None,
            sms_provider: SmsProviderKind::Log,
            twilio_base_url: twilio::DEFAULT_BASE_URL.into(),
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_from: None,
            provider_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<SecretString>| s.as_ref().map(|_| "***");
        f.debug_struct("ProviderConfig")
            .field("push_provider", &self.push_provider)
            .field("fcm_base_url", &self.fcm_base_url)
            .field("fcm_token_url", &self.fcm_token_url)
            .field("fcm_project_id", &self.fcm_project_id)
            .field("fcm_credentials_file", &self.fcm_credentials_file)
            .field("apns_base_url", &self.apns_base_url)
            .field("apns_key_file", &self.apns_key_file)
            .field("apns_key_id", &self.apns_key_id)
            .field("apns_team_id", &self.apns_team_id)
            .field("apns_topic", &self.apns_topic)
            .field("email_provider", &self.email_provider)
            .field("email_failover_provider", &self.email_failover_provider)
            .field(
                "smtp_url",
                &self
                    .smtp_url
                    .as_ref()
                    .map(|u| redact_url(u.expose_secret())),
            )
            .field("smtp_pool_size", &self.smtp_pool_size)
            .field("smtp_ca_file", &self.smtp_ca_file)
            .field("email_from", &self.email_from)
            .field(
                "email_http_url",
                &self.email_http_url.as_deref().map(redact_url),
            )
            .field("email_http_token", &hidden(&self.email_http_token))
            .field("sendgrid_base_url", &self.sendgrid_base_url)
            .field("sendgrid_api_key", &hidden(&self.sendgrid_api_key))
            .field("receipts_base_url", &self.receipts_base_url)
            .field("sms_provider", &self.sms_provider)
            .field("twilio_base_url", &self.twilio_base_url)
            .field("twilio_account_sid", &self.twilio_account_sid)
            .field("twilio_auth_token", &hidden(&self.twilio_auth_token))
            .field("twilio_from", &self.twilio_from)
            .field("provider_timeout", &self.provider_timeout)
            .finish()
    }
}

/// A setting a chosen provider cannot do without.
fn required<'a, T>(value: &'a Option<T>, var: &str, chosen: &str) -> anyhow::Result<&'a T> {
    value
        .as_ref()
        .with_context(|| format!("{chosen} needs {var}, which is not set"))
}

/// The email provider of `kind`, chosen by the variable `var`.
fn email(
    kind: EmailProviderKind,
    cfg: &ProviderConfig,
    var: &str,
) -> anyhow::Result<Arc<dyn Provider>> {
    let chosen = format!("{var}={}", kind.name());
    let from = || required(&cfg.email_from, "EMAIL_FROM", &chosen);
    let timeout = cfg.provider_timeout;
    Ok(match kind {
        EmailProviderKind::Log => Arc::new(LogProvider),
        EmailProviderKind::Smtp => {
            let url = required(&cfg.smtp_url, "SMTP_URL", &chosen)?;
            let roots =
                match &cfg.smtp_ca_file {
                    Some(path) => Some(std::fs::read(path).with_context(|| {
                        format!("SMTP_CA_FILE {} cannot be read", path.display())
                    })?),
                    None => None,
                };
            Arc::new(SmtpProvider::new(
                url.expose_secret(),
                from()?,
                timeout,
                cfg.smtp_pool_size,
                roots.as_deref(),
            )?)
        }
        EmailProviderKind::Http => {
            let url = required(&cfg.email_http_url, "EMAIL_HTTP_URL", &chosen)?;
            let token = cfg.email_http_token.clone();
            Arc::new(HttpEmailProvider::new(url, token, from()?, timeout)?)
        }
        EmailProviderKind::Sendgrid => {
            let key = required(&cfg.sendgrid_api_key, "SENDGRID_API_KEY", &chosen)?;
            Arc::new(SendGridProvider::new(
                &cfg.sendgrid_base_url,
                key.clone(),
                from()?,
                timeout,
            )?)
        }
    })
}

/// Builds `channel`'s providers from `cfg`: reads key files and checks the
/// settings of every chosen provider, failing with the missing variable's name.
pub fn build(channel: Channel, cfg: &ProviderConfig) -> anyhow::Result<ProviderSet> {
    let timeout = cfg.provider_timeout;
    let single = |provider: Arc<dyn Provider>| Ok(ProviderSet::single(provider));
    match channel {
        Channel::Push => build_push(cfg),
        Channel::Email => {
            let set = ProviderSet::single(email(cfg.email_provider, cfg, "EMAIL_PROVIDER")?);
            Ok(match cfg.email_failover_provider {
                None => set,
                Some(EmailProviderKind::Log) => anyhow::bail!(
                    "EMAIL_FAILOVER_PROVIDER=log would record emails as sent without sending them; \
                     use smtp, http or sendgrid"
                ),
                Some(kind) if kind == cfg.email_provider => anyhow::bail!(
                    "EMAIL_FAILOVER_PROVIDER is the same as EMAIL_PROVIDER ({}); \
                     a failover needs a second provider",
                    kind.name()
                ),
                Some(kind) => set.with_failover(email(kind, cfg, "EMAIL_FAILOVER_PROVIDER")?),
            })
        }
        Channel::Sms => match cfg.sms_provider {
            SmsProviderKind::Log => single(Arc::new(LogProvider)),
            SmsProviderKind::Twilio => {
                let chosen = "SMS_PROVIDER=twilio";
                let sid = required(&cfg.twilio_account_sid, "TWILIO_ACCOUNT_SID", chosen)?;
                let token = required(&cfg.twilio_auth_token, "TWILIO_AUTH_TOKEN", chosen)?;
                let sender = required(&cfg.twilio_from, "TWILIO_FROM", chosen)?;
                single(Arc::new(
                    TwilioProvider::new(&cfg.twilio_base_url, sid, token.clone(), sender, timeout)?
                        .with_status_callbacks(cfg.receipts_base_url.as_deref()),
                ))
            }
        },
    }
}

fn build_push(cfg: &ProviderConfig) -> anyhow::Result<ProviderSet> {
    let kinds = &cfg.push_provider;
    if kinds.is_empty() {
        bail!("PUSH_PROVIDER is empty; choose fcm, apns or log");
    }
    let mut names = Vec::new();
    let log: Option<Arc<dyn Provider>> = kinds
        .contains(&PushProviderKind::Log)
        .then(|| Arc::new(LogProvider) as Arc<dyn Provider>);
    // A platform no chosen provider covers is refused with the reason rather
    // than logged and reported sent: a silent success would hide a missing
    // setting in production until someone wonders why iPhones stay quiet.
    let uncovered = |platform: &str| -> Arc<dyn Provider> {
        log.clone().unwrap_or_else(|| {
            Arc::new(Unconfigured::new(format!(
                "push to {platform} devices is not configured (PUSH_PROVIDER={})",
                kind_list(kinds)
            )))
        })
    };

    let fcm = if kinds.contains(&PushProviderKind::Fcm) {
        let path = required(
            &cfg.fcm_credentials_file,
            "FCM_CREDENTIALS_FILE",
            "PUSH_PROVIDER=fcm",
        )?;
        let account = ServiceAccount::from_file(path, cfg.fcm_token_url.as_deref())?;
        let project = match (&cfg.fcm_project_id, &account.project_id) {
            (Some(id), _) | (None, Some(id)) => id.clone(),
            (None, None) => bail!(
                "PUSH_PROVIDER=fcm needs FCM_PROJECT_ID, which is not set (nor is `project_id` in the credentials file)"
            ),
        };
        names.push("fcm");
        Arc::new(FcmProvider::new(
            &cfg.fcm_base_url,
            &project,
            account,
            cfg.provider_timeout,
        )?) as Arc<dyn Provider>
    } else {
        uncovered("fcm")
    };

    let apns = if kinds.contains(&PushProviderKind::Apns) {
        let chosen = "PUSH_PROVIDER=apns";
        let path = required(&cfg.apns_key_file, "APNS_KEY_FILE", chosen)?;
        let key_id = required(&cfg.apns_key_id, "APNS_KEY_ID", chosen)?;
        let team_id = required(&cfg.apns_team_id, "APNS_TEAM_ID", chosen)?;
        let topic = required(&cfg.apns_topic, "APNS_TOPIC", chosen)?;
        let key = ApnsKey::from_file(path, key_id, team_id)?;
        names.push("apns");
        Arc::new(ApnsProvider::new(
            &cfg.apns_base_url,
            topic,
            key,
            cfg.provider_timeout,
        )?) as Arc<dyn Provider>
    } else {
        uncovered("apns")
    };

    if log.is_some() {
        names.push("log");
    }
    let other = log.clone().unwrap_or_else(|| {
        Arc::new(Unconfigured::new(
            "the device has no platform, so no push provider can be chosen".into(),
        ))
    });
    Ok(ProviderSet::by_platform(fcm, apns, other, names))
}

fn kind_list(kinds: &[PushProviderKind]) -> String {
    kinds
        .iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        providers: ProviderConfig,
    }

    fn parse(args: &[&str]) -> ProviderConfig {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
            .expect("parses")
            .providers
    }

    #[test]
    fn parses_lists_durations_and_hides_secrets() {
        let cfg = parse(&[
            "--push-provider",
            "fcm,apns",
            "--provider-timeout",
            "1500ms",
            "--twilio-auth-token",
            "s3cret",
            "--smtp-url",
            "smtps://me:pw@mail.example.com",
            "--email-http-token",
            "tok-9f8e",
            "--email-http-url",
            "https://api:url-key@mail.example.com/send",
        ]);
        assert_eq!(
            cfg.push_provider,
            [PushProviderKind::Fcm, PushProviderKind::Apns]
        );
        assert_eq!(cfg.provider_timeout, Duration::from_millis(1500));
        let debug = format!("{cfg:?}");
        for secret in ["s3cret", "pw@", "tok-9f8e", "url-key"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert_eq!(parse(&[]).push_provider, [PushProviderKind::Log]);
    }

    #[test]
    fn missing_settings_are_named() {
        let cfg = ProviderConfig {
            email_provider: EmailProviderKind::Smtp,
            sms_provider: SmsProviderKind::Twilio,
            push_provider: vec![PushProviderKind::Apns],
            ..ProviderConfig::default()
        };
        let err = |c| format!("{:#}", build(c, &cfg).unwrap_err());
        assert!(err(Channel::Email).contains("SMTP_URL"));
        assert!(err(Channel::Sms).contains("TWILIO_ACCOUNT_SID"));
        assert!(err(Channel::Push).contains("APNS_KEY_FILE"));

        let logs = build(Channel::Push, &ProviderConfig::default()).expect("log builds");
        assert_eq!(logs.names(), ["log"]);
    }
}
