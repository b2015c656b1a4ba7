//! The routing decisions for one recipient, as pure functions of the
//! request, the tenant's policy, the recipient and the clock, so the order of
//! the rules is visible in one place and tested without a database.
//!
//! Order (docs/routing.md): the request's channel restriction and content
//! pick the candidate channels; then per channel: tenant-required category,
//! opt-outs, destinations, the suppression list, rendering, frequency cap (applied by the caller,
//! which needs the database), quiet hours, `send_at`, `expires_at`.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::quiet::quiet_until;
use crate::model::{
    Channel, Lane,
    message::{Destination, EmailMessage, PushMessage, Rendered, SmsMessage},
    notification::{Content, NotificationRequest},
    preferences::Preferences,
    suppression::ADDRESS_SUPPRESSED,
    template::{self, Markup, TemplateError, Vars},
    user::{Platform, Profile},
};

/// A recipient as the router sees it.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub user_id: String,
    /// `None` when no such user exists in the tenant.
    pub profile: Option<Profile>,
    pub preferences: Preferences,
    /// Active devices: token and platform.
    pub devices: Vec<(String, Platform)>,
    /// Channels whose address (email, phone) is on the tenant's
    /// suppression list.
    pub suppressed: Vec<Channel>,
}

impl Recipient {
    /// A user the tenant does not have (never created, or erased).
    pub fn unknown(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            profile: None,
            preferences: Preferences::default(),
            devices: Vec::new(),
            suppressed: Vec::new(),
        }
    }
}

/// Status a delivery is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    Pending,
    Deferred,
    Suppressed,
    Failed,
    Expired,
}

impl Initial {
    /// The stored status name.
    pub fn as_str(self) -> &'static str {
        match self {
            Initial::Pending => "pending",
            Initial::Deferred => "deferred",
            Initial::Suppressed => "suppressed",
            Initial::Failed => "failed",
            Initial::Expired => "expired",
        }
    }
}

/// One delivery the router will record.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub user_id: String,
    pub channel: Channel,
    pub destination: Destination,
    pub status: Initial,
    pub reason: Option<String>,
    pub rendered: Option<Rendered>,
    pub not_before: Option<DateTime<Utc>>,
}

/// The tenant's routing policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Categories that ignore opt-outs.
    pub required: HashSet<String>,
}

fn render_for(
    content: &Content,
    channel: Channel,
    vars: &Vars<'_>,
) -> Result<Rendered, TemplateError> {
    // Every part is plain text except an email's `html`, whose values the
    // renderer escapes.
    let render = |s: &Option<String>, markup| {
        s.as_deref()
            .map(|t| template::render(t, vars, markup))
            .transpose()
    };
    let r = |s: &Option<String>| render(s, Markup::Text);
    Ok(match channel {
        Channel::Push => {
            let push = content
                .push
                .as_ref()
                .expect("candidate channels have content");
            let data = push
                .data
                .iter()
                .map(|(k, v)| Ok((k.clone(), template::render(v, vars, Markup::Text)?)))
                .collect::<Result<BTreeMap<_, _>, TemplateError>>()?;
            Rendered::Push(PushMessage {
                title: r(&push.title)?,
                body: r(&push.body)?,
                data,
            })
        }
        Channel::Email => {
            let email = content
                .email
                .as_ref()
                .expect("candidate channels have content");
            Rendered::Email(EmailMessage {
                subject: r(&email.subject)?.unwrap_or_default(),
                text: r(&email.text)?,
                html: render(&email.html, Markup::Html)?,
            })
        }
        Channel::Sms => {
            let sms = content
                .sms
                .as_ref()
                .expect("candidate channels have content");
            Rendered::Sms(SmsMessage {
                text: r(&sms.text)?.unwrap_or_default(),
            })
        }
    })
}

fn destinations(
    profile: &Profile,
    devices: &[(String, Platform)],
    channel: Channel,
) -> Vec<Destination> {
    match channel {
        Channel::Email => profile
            .email
            .iter()
            .map(|e| Destination {
                address: e.as_str().to_owned(),
                platform: None,
            })
            .collect(),
        Channel::Sms => profile
            .phone
            .iter()
            .map(|p| Destination {
                address: p.as_str().to_owned(),
                platform: None,
            })
            .collect(),
        Channel::Push => devices
            .iter()
            .map(|(token, platform)| Destination {
                address: token.clone(),
                platform: Some(*platform),
            })
            .collect(),
    }
}

fn nowhere() -> Destination {
    Destination {
        address: String::new(),
        platform: None,
    }
}

/// Phase one: candidates with their destinations and rendered content, or the
/// suppression/failure that ends them. Pending ones still face the cap and
/// the clock ([`apply_timing`]).
pub fn plan_recipient(req: &NotificationRequest, policy: &Policy, r: &Recipient) -> Vec<Planned> {
    let mut out = Vec::new();
    let ended = |channel, status, reason: String| Planned {
        user_id: r.user_id.clone(),
        channel,
        destination: nowhere(),
        status,
        reason: Some(reason),
        rendered: None,
        not_before: None,
    };
    for channel in req.wanted_channels() {
        let Some(profile) = &r.profile else {
            out.push(ended(channel, Initial::Suppressed, "unknown_user".into()));
            continue;
        };
        let required = policy.required.contains(req.category.as_str());
        if !required && !r.preferences.allows(&req.category, channel) {
            out.push(ended(channel, Initial::Suppressed, "opted_out".into()));
            continue;
        }
        let targets = destinations(profile, &r.devices, channel);
        if targets.is_empty() {
            out.push(ended(channel, Initial::Suppressed, "no_destination".into()));
            continue;
        }
        // Even a required category stops here: sending to a mailbox that
        // bounced or a recipient who complained helps no one.
        if r.suppressed.contains(&channel) {
            out.extend(targets.into_iter().map(|destination| Planned {
                user_id: r.user_id.clone(),
                channel,
                destination,
                status: Initial::Suppressed,
                reason: Some(ADDRESS_SUPPRESSED.into()),
                rendered: None,
                not_before: None,
            }));
            continue;
        }
        let profile_vars = profile.template_vars(&r.user_id);
        let vars = Vars {
            data: &req.data,
            profile: &profile_vars,
        };
        match render_for(&req.content, channel, &vars) {
            Err(e) => out.push(ended(channel, Initial::Failed, format!("template: {e}"))),
            Ok(rendered) => out.extend(targets.into_iter().map(|destination| Planned {
                user_id: r.user_id.clone(),
                channel,
                destination,
                status: Initial::Pending,
                reason: None,
                rendered: Some(rendered.clone()),
                not_before: None,
            })),
        }
    }
    out
}

/// Phase three: quiet hours (`normal` and `bulk` only), `send_at`, then
/// `expires_at`, for a delivery still pending after the cap.
pub fn apply_timing(
    planned: &mut Planned,
    req: &NotificationRequest,
    r: &Recipient,
    now: DateTime<Utc>,
) {
    if planned.status != Initial::Pending {
        return;
    }
    let at = req.send_at.filter(|t| *t > now).unwrap_or(now);
    let mut not_before = (at > now).then_some(at);
    let mut reason = not_before.map(|_| "send_at".to_owned());
    if req.priority != Lane::High
        && let Some(q) = &r.preferences.quiet_hours
    {
        let tz: Tz = r
            .profile
            .as_ref()
            .and_then(|p| p.timezone.as_deref())
            .and_then(|tz| tz.parse().ok())
            .unwrap_or(Tz::UTC);
        if let Some(until) = quiet_until(q, tz, at) {
            not_before = Some(until);
            reason = Some("quiet_hours".into());
        }
    }
    if let Some(expires) = req.expires_at
        && (expires <= now || not_before.is_some_and(|t| t >= expires))
    {
        planned.status = Initial::Expired;
        planned.reason = Some("expired before it could be sent".into());
        planned.rendered = None;
        return;
    }
    if let Some(t) = not_before {
        planned.status = Initial::Deferred;
        planned.not_before = Some(t);
        planned.reason = reason;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::user::{EmailAddress, PhoneE164};

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    fn request(extra: Value) -> NotificationRequest {
        let mut base = json!({
            "category": "marketing",
            "to": {"users": ["u-1"]},
            "content": {
                "push": {"title": "Hi {{name}}"},
                "email": {"subject": "Sale", "text": "Hi {{name}}, {{deal}}"},
                "sms": {"text": "Sale: {{deal}}"}
            },
            "data": {"deal": "50% off"}
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        NotificationRequest::parse(base, now()).unwrap()
    }

    fn ada() -> Recipient {
        Recipient {
            user_id: "u-1".into(),
            profile: Some(Profile {
                name: Some("Ada".into()),
                email: Some(EmailAddress::parse("ada@example.com").unwrap()),
                phone: None,
                locale: None,
                timezone: Some("Europe/Paris".into()),
            }),
            preferences: Preferences::default(),
            devices: vec![
                ("tok-1".into(), Platform::Fcm),
                ("tok-2".into(), Platform::Apns),
            ],
            suppressed: Vec::new(),
        }
    }

    fn statuses(planned: &[Planned]) -> Vec<(Channel, Initial, Option<&str>)> {
        planned
            .iter()
            .map(|p| (p.channel, p.status, p.reason.as_deref()))
            .collect()
    }

    #[test]
    fn one_delivery_per_destination_and_reasons_for_the_rest() {
        let planned = plan_recipient(&request(json!({})), &Policy::default(), &ada());
        assert_eq!(
            statuses(&planned),
            vec![
                (Channel::Push, Initial::Pending, None),
                (Channel::Push, Initial::Pending, None),
                (Channel::Email, Initial::Pending, None),
                (Channel::Sms, Initial::Suppressed, Some("no_destination")),
            ]
        );
        assert_eq!(
            planned[2].rendered,
            Some(Rendered::Email(EmailMessage {
                subject: "Sale".into(),
                text: Some("Hi Ada, 50% off".into()),
                html: None
            }))
        );
    }

    #[test]
    fn html_email_values_are_escaped_and_text_is_not() {
        let mut r = ada();
        r.profile.as_mut().unwrap().name = Some("<b>Ada</b>".into());
        let req = request(json!({"channels": ["email"], "content": {"email": {
            "subject": "{{name}}", "text": "Hi {{name}}", "html": "<p>Hi {{name}}</p>"}}}));
        let planned = plan_recipient(&req, &Policy::default(), &r);
        assert_eq!(
            planned[0].rendered,
            Some(Rendered::Email(EmailMessage {
                subject: "<b>Ada</b>".into(),
                text: Some("Hi <b>Ada</b>".into()),
                html: Some("<p>Hi &lt;b&gt;Ada&lt;/b&gt;</p>".into()),
            }))
        );
    }

    #[test]
    fn opt_outs_yield_to_required_categories() {
        let mut r = ada();
        r.profile.as_mut().unwrap().phone = Some(PhoneE164::parse("+14155550100").unwrap());
        r.preferences = Preferences::parse(
            json!({"channels": {"sms": false}, "categories": {"marketing": {"push": false}}}),
        )
        .unwrap();
        let planned = plan_recipient(&request(json!({})), &Policy::default(), &r);
        assert_eq!(
            statuses(&planned),
            vec![
                (Channel::Push, Initial::Suppressed, Some("opted_out")),
                (Channel::Email, Initial::Pending, None),
                (Channel::Sms, Initial::Suppressed, Some("opted_out")),
            ]
        );
        let policy = Policy {
            required: HashSet::from(["marketing".to_owned()]),
        };
        let planned = plan_recipient(&request(json!({})), &policy, &r);
        assert!(planned.iter().all(|p| p.status == Initial::Pending));
    }

    #[test]
    fn suppressed_addresses_hold_even_for_required_categories() {
        let mut r = ada();
        r.suppressed = vec![Channel::Email];
        let policy = Policy {
            required: HashSet::from(["marketing".to_owned()]),
        };
        let planned = plan_recipient(
            &request(json!({"channels": ["email", "push"]})),
            &policy,
            &r,
        );
        assert_eq!(
            statuses(&planned),
            vec![
                (Channel::Push, Initial::Pending, None),
                (Channel::Push, Initial::Pending, None),
                (
                    Channel::Email,
                    Initial::Suppressed,
                    Some("address_suppressed")
                ),
            ]
        );
        assert_eq!(planned[2].destination.address, "ada@example.com");
        assert!(planned[2].rendered.is_none());
    }

    #[test]
    fn restriction_and_content_choose_candidates() {
        let req = request(
            json!({"channels": ["email", "sms"], "content": {"email": {"subject": "s", "text": "t"}}}),
        );
        let planned = plan_recipient(&req, &Policy::default(), &ada());
        assert_eq!(
            statuses(&planned),
            vec![(Channel::Email, Initial::Pending, None)]
        );
    }

    #[test]
    fn missing_variable_fails_the_delivery_with_the_reason() {
        let req = request(json!({"data": {}}));
        let planned = plan_recipient(&req, &Policy::default(), &ada());
        let email = planned
            .iter()
            .find(|p| p.channel == Channel::Email)
            .unwrap();
        assert_eq!(email.status, Initial::Failed);
        assert_eq!(
            email.reason.as_deref(),
            Some("template: missing variable `deal`")
        );
        let push = planned.iter().find(|p| p.channel == Channel::Push).unwrap();
        assert_eq!(push.status, Initial::Pending, "push only needs {{name}}");
    }

    #[test]
    fn unknown_users_are_recorded() {
        let mut r = ada();
        r.profile = None;
        let planned = plan_recipient(
            &request(json!({"channels": ["email"]})),
            &Policy::default(),
            &r,
        );
        assert_eq!(
            statuses(&planned),
            vec![(Channel::Email, Initial::Suppressed, Some("unknown_user"))]
        );
    }

    #[test]
    fn quiet_hours_defer_normal_but_not_high_then_send_at_then_expiry() {
        let mut r = ada();
        // 12:00 UTC is 13:00 in Paris: quiet from 12:30 to 14:00 local.
        r.preferences =
            Preferences::parse(json!({"quiet_hours": {"start": "12:30", "end": "14:00"}})).unwrap();
        let req = request(json!({"channels": ["email"]}));
        let mut p = plan_recipient(&req, &Policy::default(), &r).remove(0);
        apply_timing(&mut p, &req, &r, now());
        assert_eq!(p.status, Initial::Deferred);
        assert_eq!(p.reason.as_deref(), Some("quiet_hours"));
        assert_eq!(p.not_before, Some("2026-11-22T13:00:00Z".parse().unwrap()));

        let high = request(json!({"channels": ["email"], "priority": "high"}));
        let mut p = plan_recipient(&high, &Policy::default(), &r).remove(0);
        apply_timing(&mut p, &high, &r, now());
        assert_eq!(p.status, Initial::Pending);

        // send_at after the window: deferred to send_at.
        let later = request(json!({"channels": ["email"], "send_at": "2026-11-22T18:00:00Z"}));
        let mut p = plan_recipient(&later, &Policy::default(), &r).remove(0);
        apply_timing(&mut p, &later, &r, now());
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (Initial::Deferred, Some("send_at"))
        );
        assert_eq!(p.not_before, Some("2026-11-22T18:00:00Z".parse().unwrap()));

        // Quiet until 13:00 UTC but expiring at 12:30: expired, never sent late.
        let expiring =
            request(json!({"channels": ["email"], "expires_at": "2026-11-22T12:30:00Z"}));
        let mut p = plan_recipient(&expiring, &Policy::default(), &r).remove(0);
        apply_timing(&mut p, &expiring, &r, now());
        assert_eq!(p.status, Initial::Expired);
        assert!(p.rendered.is_none());
    }
}
