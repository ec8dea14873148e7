//! Times as people near the screen read them: in the local time zone, with
//! the zone's name ("Tue 08:00 CET"), so that a deadline read on a laptop
//! that travelled, or in a remote session, is not an hour off.
//!
//! The zone is `TZ` when it names an IANA zone, else the system's
//! (`/etc/localtime`, the registry); a zone without a name shows its offset
//! from UTC.

use chrono::{DateTime, Local, Utc};

/// A time zone to show times in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// A named zone: its abbreviation is shown (CET, CEST, EST, +04).
    Named(chrono_tz::Tz),
    /// The system's offset, shown as `UTC+01:00`.
    Local,
}

impl Zone {
    /// This machine's (or `TZ`'s) zone.
    pub fn local() -> Zone {
        let from_env = std::env::var("TZ")
            .ok()
            .map(|tz| tz.trim_start_matches(':').to_string());
        from_env
            .filter(|tz| !tz.is_empty())
            .or_else(|| iana_time_zone::get_timezone().ok())
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .map_or(Zone::Local, Zone::Named)
    }

    /// `t` formatted with `pattern` (chrono's syntax, without `%Z`), then a
    /// space and the zone.
    pub fn format(&self, t: DateTime<Utc>, pattern: &str) -> String {
        match self {
            Zone::Named(tz) => {
                let t = t.with_timezone(tz);
                format!("{} {}", t.format(pattern), t.format("%Z"))
            }
            Zone::Local => {
                let t = t.with_timezone(&Local);
                format!("{} UTC{}", t.format(pattern), t.format("%:z"))
            }
        }
    }

    /// "Tue 08:00 CET": a deadline or an end within the week.
    pub fn clock(&self, t: DateTime<Utc>) -> String {
        self.format(t, "%a %H:%M")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn times_carry_the_zone_name() {
        let winter = Utc.with_ymd_and_hms(2026, 11, 28, 17, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 4, 17, 0, 0).unwrap();
        let berlin = Zone::Named(chrono_tz::Europe::Berlin);
        assert_eq!(berlin.clock(winter), "Sat 18:00 CET");
        assert_eq!(berlin.clock(summer), "Sat 19:00 CEST");
        assert_eq!(Zone::Named(chrono_tz::UTC).clock(winter), "Sat 17:00 UTC");
        assert_eq!(
            berlin.format(winter, "%Y-%m-%d %H:%M"),
            "2026-11-28 18:00 CET"
        );
        assert!(
            Zone::Local.clock(winter).contains(" UTC"),
            "{}",
            Zone::Local.clock(winter)
        );
    }
}
