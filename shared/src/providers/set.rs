//! The providers of one channel and the choice among them: on push, a
//! device's platform picks FCM or APNs; email may have a failover provider
//! for while the first one's circuit is open.

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;

use super::{Destination, ErrorClass, Outcome, Provider, Rendered, SendContext};
use crate::model::user::Platform;

/// The providers of one channel, and which one each destination goes to.
pub struct ProviderSet {
    fcm: Arc<dyn Provider>,
    apns: Arc<dyn Provider>,
    /// Email, SMS, and push devices whose platform is unknown.
    other: Arc<dyn Provider>,
    /// Takes `other`'s destinations while `other`'s circuit is open.
    failover: Option<Arc<dyn Provider>>,
    names: Vec<&'static str>,
}

impl ProviderSet {
    /// Push providers by platform; `other` takes devices with no platform.
    pub(super) fn by_platform(
        fcm: Arc<dyn Provider>,
        apns: Arc<dyn Provider>,
        other: Arc<dyn Provider>,
        names: Vec<&'static str>,
    ) -> Self {
        Self {
            fcm,
            apns,
            other,
            failover: None,
            names,
        }
    }

    /// One provider for every destination (email, SMS, tests).
    pub fn single(provider: Arc<dyn Provider>) -> Self {
        Self {
            names: vec![provider.name()],
            fcm: provider.clone(),
            apns: provider.clone(),
            other: provider,
            failover: None,
        }
    }

    /// Adds `failover` for the destinations of the single provider
    /// (email): the engine sends through it while that provider's circuit
    /// is open.
    pub fn with_failover(mut self, failover: Arc<dyn Provider>) -> Self {
        self.names.push(failover.name());
        self.failover = Some(failover);
        self
    }

    /// The provider `to` goes to: on push, its device's platform decides.
    pub fn for_destination(&self, to: &Destination) -> &dyn Provider {
        match to.platform {
            Some(Platform::Fcm) => self.fcm.as_ref(),
            Some(Platform::Apns) => self.apns.as_ref(),
            None => self.other.as_ref(),
        }
    }

    /// Names of the providers in use, for logs and metrics.
    pub fn names(&self) -> Vec<&'static str> {
        self.names.clone()
    }
}

impl fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSet")
            .field("names", &self.names)
            .finish()
    }
}

/// Stands in for a provider that is not configured: every send is a
/// permanent `Config` failure carrying the reason, visible in the delivery's
/// last error and the dead-letter store.
#[derive(Debug, Clone)]
pub struct Unconfigured {
    reason: String,
}

impl Unconfigured {
    /// A stand-in failing every send with `reason`.
    pub fn new(reason: String) -> Self {
        Self { reason }
    }
}

impl Provider for Unconfigured {
    fn name(&self) -> &'static str {
        "unconfigured"
    }

    fn send<'a>(
        &'a self,
        _message: &'a Rendered,
        _to: &'a Destination,
        _ctx: &'a SendContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            Outcome::Permanent {
                class: ErrorClass::Config,
                reason: self.reason.clone(),
                deactivate: false,
            }
        })
    }
}

impl super::Providers for ProviderSet {
    fn for_destination(&self, to: &Destination) -> &dyn Provider {
        ProviderSet::for_destination(self, to)
    }

    fn failover(&self, to: &Destination) -> Option<&dyn Provider> {
        match to.platform {
            None => self.failover.as_deref(),
            Some(_) => None,
        }
    }

    fn names(&self) -> Vec<&'static str> {
        ProviderSet::names(self)
    }

    fn failover_names(&self) -> Option<(&'static str, &'static str)> {
        let failover = self.failover.as_ref()?;
        Some((self.other.name(), failover.name()))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::{
        model::Lane,
        providers::{PushMessage, log::LogProvider},
    };

    fn ctx() -> SendContext {
        SendContext {
            delivery_id: Uuid::nil(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            notification_id: Uuid::nil(),
            lane: Lane::Normal,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn an_unconfigured_platform_fails_permanently() {
        let set = ProviderSet {
            fcm: Arc::new(LogProvider),
            apns: Arc::new(Unconfigured::new("apns is not configured".into())),
            other: Arc::new(LogProvider),
            failover: None,
            names: vec!["log"],
        };
        let to = Destination {
            address: "abcd".into(),
            platform: Some(Platform::Apns),
        };
        let message = Rendered::Push(PushMessage::default());
        let outcome = set.for_destination(&to).send(&message, &to, &ctx()).await;
        assert!(matches!(
            outcome,
            Outcome::Permanent { class: ErrorClass::Config, ref reason, .. } if reason.contains("apns")
        ));
    }
}
