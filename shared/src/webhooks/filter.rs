//! Which events an endpoint wants: filters `{channel}.{status}` such as
//! `email.bounced`, `push.*`, `*.failed`, or `*` for every event.

/// Most filters one endpoint may have.
pub const MAX_FILTERS: usize = 32;

/// One parsed filter; `None` is the wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    channel: Option<String>,
    status: Option<String>,
}

fn part(s: &str, what: &str) -> Result<Option<String>, String> {
    if s == "*" {
        return Ok(None);
    }
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(format!(
            "`{s}` is not a {what}: lowercase letters and `_`, or `*`"
        ));
    }
    Ok(Some(s.to_owned()))
}

impl EventFilter {
    /// Parses `channel.status` (`*` for either), or `*` alone.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self {
                channel: None,
                status: None,
            });
        }
        let (channel, status) = s.split_once('.').ok_or_else(|| {
            format!("`{s}` is not `channel.status` (e.g. `email.bounced`, `push.*`)")
        })?;
        let channel = part(channel, "channel")?;
        if let Some(c) = &channel
            && !["push", "email", "sms"].contains(&c.as_str())
        {
            return Err(format!("`{c}` is not a channel: push, email, sms or `*`"));
        }
        Ok(Self {
            channel,
            status: part(status, "status")?,
        })
    }

    /// Whether an event of `channel` and `status` passes.
    pub fn matches(&self, channel: &str, status: &str) -> bool {
        self.channel.as_deref().is_none_or(|c| c == channel)
            && self.status.as_deref().is_none_or(|s| s == status)
    }
}

/// Whether any of `filters` (as stored) lets the event through.
pub fn any_matches(filters: &[String], channel: &str, status: &str) -> bool {
    filters
        .iter()
        .filter_map(|f| EventFilter::parse(f).ok())
        .any(|f| f.matches(channel, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_by_channel_and_status() {
        let f = |s: &str| EventFilter::parse(s).unwrap();
        assert!(f("email.bounced").matches("email", "bounced"));
        assert!(!f("email.bounced").matches("email", "sent"));
        assert!(f("push.*").matches("push", "failed"));
        assert!(!f("push.*").matches("sms", "failed"));
        assert!(f("*.failed").matches("sms", "failed"));
        assert!(f("*").matches("sms", "delivered"));
        for bad in [
            "",
            "email",
            "fax.sent",
            "email.",
            "Email.sent",
            "email.sent.x",
        ] {
            assert!(EventFilter::parse(bad).is_err(), "{bad}");
        }
    }
}
