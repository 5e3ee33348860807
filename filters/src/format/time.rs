//! `%START_TIME%` and `%START_TIME(FORMAT)%`: the stream's start in UTC,
//! by default as Envoy prints it (`2026-12-06T14:20:02.123Z`), or through
//! a strftime format (the common specifiers, plus Envoy's `%f`, `%3f`,
//! `%6f`, `%9f` fractions and `%s` epoch seconds). The format is compiled
//! once; an unknown specifier is refused by name.

use meshgate_core::BuildError;
use meshgate_core::stream::StreamInfo;
use std::fmt::Write;

#[derive(Debug, PartialEq)]
pub(crate) struct Strftime(Vec<Part>);

#[derive(Debug, PartialEq, Clone, Copy)]
enum Part {
    Lit(char),
    Year,
    Month,
    Day,
    DaySpace,
    Hour,
    Minute,
    Second,
    Epoch,
    /// Fraction of a second with this many digits.
    Frac(u8),
    YearDay,
    Zone,
    ZoneName,
    MonthName,
    WeekdayName,
}

/// A civil UTC time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    yday: i64,
    wday: i64,
}

fn civil(secs: i64) -> Civil {
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian
    // calendar's arithmetic, era by era of 400 years).
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const BEFORE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE[(month - 1) as usize] + i64::from(day) + i64::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        minute: sod % 3600 / 60,
        second: sod % 60,
        yday,
        // 1970-01-01 was a Thursday.
        wday: (days + 4).rem_euclid(7),
    }
}

/// `2026-12-06T14:20:02.123Z`.
pub(crate) fn format_utc(secs: i64, millis: u32) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// The stream's start, wall clock.
fn started(info: &StreamInfo) -> std::time::Duration {
    std::time::SystemTime::now()
        .checked_sub(info.start.elapsed())
        .unwrap_or(std::time::UNIX_EPOCH)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

pub(crate) fn start_time(info: &StreamInfo, f: Option<&Strftime>) -> String {
    let d = started(info);
    match f {
        None => format_utc(d.as_secs() as i64, d.subsec_millis()),
        Some(f) => f.render(d),
    }
}

impl Strftime {
    pub(crate) fn parse(s: &str, path: &str) -> Result<Self, BuildError> {
        let mut parts = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                parts.push(Part::Lit(c));
                continue;
            }
            let mut spec = chars.next();
            // Envoy's %3f, %6f, %9f.
            let mut digits = None;
            if let Some(d @ ('1'..='9')) = spec {
                digits = Some(d as u8 - b'0');
                spec = chars.next();
            }
            let p = match (spec, digits) {
                (Some('f'), Some(n)) => Part::Frac(n),
                (Some('f'), None) => Part::Frac(9),
                (Some(c), Some(_)) => {
                    return Err(BuildError::new(
                        path,
                        format!("%START_TIME%: a width is only allowed before f (got %{c})"),
                    ));
                }
                (Some('Y'), None) => Part::Year,
                (Some('m'), None) => Part::Month,
                (Some('d'), None) => Part::Day,
                (Some('e'), None) => Part::DaySpace,
                (Some('H'), None) => Part::Hour,
                (Some('M'), None) => Part::Minute,
                (Some('S'), None) => Part::Second,
                (Some('s'), None) => Part::Epoch,
                (Some('j'), None) => Part::YearDay,
                (Some('z'), None) => Part::Zone,
                (Some('Z'), None) => Part::ZoneName,
                (Some('b'), None) => Part::MonthName,
                (Some('a'), None) => Part::WeekdayName,
                (Some('F'), None) => {
                    parts.extend([
                        Part::Year,
                        Part::Lit('-'),
                        Part::Month,
                        Part::Lit('-'),
                        Part::Day,
                    ]);
                    continue;
                }
                (Some('T'), None) => {
                    parts.extend([
                        Part::Hour,
                        Part::Lit(':'),
                        Part::Minute,
                        Part::Lit(':'),
                        Part::Second,
                    ]);
                    continue;
                }
                (Some('%'), None) => Part::Lit('%'),
                (Some(c), None) => {
                    return Err(BuildError::new(
                        path,
                        format!(
                            "%START_TIME%: specifier %{c} is not supported (Y m d e H M S s j z Z b a F T f 3f 6f 9f %%)"
                        ),
                    ));
                }
                (None, _) => {
                    return Err(BuildError::new(path, "%START_TIME%: format ends with %"));
                }
            };
            parts.push(p);
        }
        Ok(Self(parts))
    }

    pub(crate) fn render(&self, since_epoch: std::time::Duration) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        let secs = since_epoch.as_secs() as i64;
        let c = civil(secs);
        let mut out = String::new();
        for p in &self.0 {
            let _ = match p {
                Part::Lit(ch) => {
                    out.push(*ch);
                    Ok(())
                }
                Part::Year => write!(out, "{:04}", c.year),
                Part::Month => write!(out, "{:02}", c.month),
                Part::Day => write!(out, "{:02}", c.day),
                Part::DaySpace => write!(out, "{:2}", c.day),
                Part::Hour => write!(out, "{:02}", c.hour),
                Part::Minute => write!(out, "{:02}", c.minute),
                Part::Second => write!(out, "{:02}", c.second),
                Part::Epoch => write!(out, "{secs}"),
                Part::YearDay => write!(out, "{:03}", c.yday),
                Part::Zone => write!(out, "+0000"),
                Part::ZoneName => write!(out, "UTC"),
                Part::MonthName => write!(out, "{}", MONTHS[(c.month as usize + 11) % 12]),
                Part::WeekdayName => write!(out, "{}", DAYS[c.wday as usize % 7]),
                Part::Frac(n) => {
                    let nanos = format!("{:09}", since_epoch.subsec_nanos());
                    write!(out, "{}", &nanos[..usize::from(*n).min(9)])
                }
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_is_iso8601_utc_with_millis() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_796_566_802, 123), "2026-12-06T14:20:02.123Z");
    }

    #[test]
    fn strftime_specifiers_render() {
        let d = Duration::new(1_796_566_802, 123_456_789);
        let f = Strftime::parse("%Y/%m/%d %H:%M:%S.%3f %z %s %j %a %b %F %T %f %%", "p").unwrap();
        assert_eq!(
            f.render(d),
            "2026/12/06 14:20:02.123 +0000 1796566802 340 Sun Dec 2026-12-06 14:20:02 123456789 %"
        );
        let e = Strftime::parse("%Q", "p").unwrap_err();
        assert!(e.message.contains("%Q"), "{}", e.message);
        assert!(Strftime::parse("%3Y", "p").is_err());
    }
}
