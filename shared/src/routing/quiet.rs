//! Quiet hours: when a window in the recipient's time zone ends.

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::model::preferences::QuietHours;

fn in_window(q: &QuietHours, t: NaiveTime) -> bool {
    if q.start < q.end {
        q.start <= t && t < q.end
    } else {
        t >= q.start || t < q.end
    }
}

/// If `at` falls inside the quiet window in `tz`, the instant the window ends;
/// `None` if `at` is outside it.
pub fn quiet_until(q: &QuietHours, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = at.with_timezone(&tz);
    let time = local.time();
    if !in_window(q, time) {
        return None;
    }
    let mut date = local.date_naive();
    if time >= q.end {
        date = date.succ_opt()?;
    }
    let end = date.and_time(q.end);
    let resolved = match tz.from_local_datetime(&end) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, _) => first,
        // The end falls in a DST gap: the hour after it exists.
        LocalResult::None => tz
            .from_local_datetime(&(end + Duration::hours(1)))
            .earliest()?,
    };
    Some(resolved.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(start: &str, end: &str) -> QuietHours {
        QuietHours {
            start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
            end: NaiveTime::parse_from_str(end, "%H:%M").unwrap(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn overnight_window_in_the_recipients_zone() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 22:30 in Paris (UTC+1 in November) is quiet until 07:00 next day.
        assert_eq!(
            quiet_until(&q("22:00", "07:00"), paris, utc("2026-11-22T21:30:00Z")),
            Some(utc("2026-11-23T06:00:00Z"))
        );
        // 03:00 Paris: same night, ends 07:00 that morning.
        assert_eq!(
            quiet_until(&q("22:00", "07:00"), paris, utc("2026-11-23T02:00:00Z")),
            Some(utc("2026-11-23T06:00:00Z"))
        );
        // 12:00 Paris: not quiet.
        assert_eq!(
            quiet_until(&q("22:00", "07:00"), paris, utc("2026-11-23T11:00:00Z")),
            None
        );
    }

    #[test]
    fn daytime_window_and_dst_gap() {
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            quiet_until(&q("09:00", "17:00"), ny, utc("2026-11-23T15:00:00Z")),
            Some(utc("2026-11-23T22:00:00Z"))
        );
        // 2027-03-14 02:30 does not exist in New York; the window ends at 03:30 EDT.
        assert_eq!(
            quiet_until(&q("01:00", "02:30"), ny, utc("2027-03-14T06:30:00Z")),
            Some(utc("2027-03-14T07:30:00Z"))
        );
    }
}
