//! Record timestamps: parsing a timestamp field to an instant in epoch milliseconds.
//!
//! A job's `timestamp_config` names a `format` and an optional `default_time_zone`.
//! [`TimestampFormat::new`] compiles the two once; [`TimestampFormat::parse`] then runs once per
//! record, allocation-free, and returns `None` for a value that does not match (the caller counts
//! the record as rejected).
//!
//! # Formats
//!
//! * `epoch_millis`: an integer (optionally signed, ASCII digits) taken as is.
//! * `epoch_seconds`: an integer or a decimal (`1700000000`, `1700000000.123`, `-1.5`, `.5`);
//!   digits below the millisecond are floored, like Java's `Instant::toEpochMilli`. No exponent.
//! * `iso8601`: `2024-03-01`, `2024-03-01T12:00`, `2024-03-01T12:00:00`,
//!   `2024-03-01T12:00:00.123456789` (up to 9 fraction digits), with `T`, `t` or a space between
//!   date and time, then optionally an offset (`Z`, `z`, `+01`, `+0100`, `+01:00`, `+010000`,
//!   `+01:00:00`) and/or a bracketed zone id (`[Europe/Amsterdam]`). Like Java's
//!   `ISO_DATE_TIME` it resolves strictly: `2024-02-30` and `24:00` are rejected. Years have
//!   exactly four digits. A date alone is the start of that day.
//! * anything else is a Java `DateTimeFormatter` pattern, interpreted as
//!   `DateTimeFormatter.ofPattern(pattern, Locale.ENGLISH)` with its defaults: strict,
//!   case-sensitive parsing and `ResolverStyle.SMART`.
//!
//! # Supported pattern letters
//!
//! | letter | meaning | forms |
//! | --- | --- | --- |
//! | `G` | era | `G`..`GGG` `AD`/`BC`, `GGGG` `Anno Domini`/`Before Christ` |
//! | `u` | year | like `y`, but proleptic (year 0, negative years) |
//! | `y` | year-of-era | `y` 1-19 digits, `yy` two digits base 2000 (2000..=2099), `yyy` 3-19 digits, `yyyy`+ at least that many digits, more only with a leading `+` |
//! | `M`, `L` | month | `M` 1-19 digits, `MM` 2 digits, `MMM` `Jan`, `MMMM` `January` |
//! | `d` | day-of-month | `d` 1-19 digits, `dd` 2 digits |
//! | `D` | day-of-year | `D` 1-19 digits, `DD` 2-3 digits, `DDD` 3 digits |
//! | `E` | day-of-week | `E`..`EEE` `Mon`, `EEEE` `Monday`; checked against the date |
//! | `a` | AM/PM | `AM`, `PM` |
//! | `H` | hour-of-day 0-23 | `H` 1-19 digits, `HH` 2 digits (and likewise for `h`, `K`, `k`, `m`, `s`) |
//! | `h` | clock-hour-of-am-pm 1-12 | |
//! | `K` | hour-of-am-pm 0-11 | |
//! | `k` | clock-hour-of-day 1-24 | |
//! | `m`, `s` | minute, second | |
//! | `S` | fraction of second | `S`..`SSSSSSSSS`: exactly that many digits |
//! | `n` | nano-of-second | at least as many digits as letters |
//! | `X` | offset, `Z` for zero | `X` `+01`/`+0130`, `XX` `+0130`, `XXX` `+01:30`, `XXXX` `+0130[45]`, `XXXXX` `+01:30[:45]` |
//! | `x` | offset | as `X`, but zero is written `+00`, `+0000` or `+00:00` |
//! | `Z` | offset | `Z`..`ZZZ` `+0130`, `ZZZZ` `GMT+01:30`, `ZZZZZ` `+01:30`/`Z` |
//! | `O` | localized offset | `O` `GMT+1`, `OOOO` `GMT+01:00` |
//! | `VV` | zone id | `Europe/Amsterdam`, `UTC`, `GMT+01:00`, `Z`, `+01:00` |
//! | `z` | zone name | `z`..`zzz` `CET`, `PST`, `UTC`...; `zzzz` `Central European Standard Time`...; zone ids too |
//!
//! Text in single quotes is literal (`''` is a quote); any other character that is not a letter
//! is literal; `[` ... `]` is an optional section (it may nest; an unclosed `[` ends at the end
//! of the pattern, as in Java); `{`, `}` and `#` are reserved.
//!
//! Java's number rules are followed: a single letter reads 1 to 19 digits greedily, two letters
//! read exactly two digits, and "adjacent value parsing" applies: in `yyyyMMdd` or `HHmmssSSS` the
//! first variable-width field leaves room for the fixed-width fields that follow it directly.
//! A field parsed twice must have the same value both times (`yyyy-MM-dd MMM`).
//!
//! Resolving follows `ResolverStyle.SMART`: a day-of-month beyond the end of the month but at
//! most 31 is clamped to the last day (`2023-02-30` is February 28), `24:00` with `H` is midnight
//! at the end of the day, `k` 24 and `h` 12 wrap to 0, `E`, `D`, `G` and `a` are cross-checked
//! against the resolved date and time. Missing seconds, minutes and fractions are zero.
//!
//! # Time zones
//!
//! A value's own offset (`X`, `x`, `Z`, `O`) wins over its zone (`VV`, `z`), which wins over
//! `default_time_zone` (UTC when absent). A local date-time is converted like Java's
//! `ZonedDateTime.of(localDateTime, zone)`: in a DST gap the time moves forward by the length of
//! the gap, in an overlap the earlier offset (summer time) is used. Zone names (`z`) map to
//! zones exactly as Java 17 maps them for `Locale.ENGLISH`, including Java's surprises: `CEST`
//! and `CET` both mean `Europe/Paris` (so `CEST` on a winter date is +01:00), `IST` means
//! `Africa/Abidjan`, `BST` means `Pacific/Bougainville`.
//!
//! # Deliberate differences from Java
//!
//! * A pattern that can never produce an instant is rejected by [`TimestampFormat::new`] instead
//!   of rejecting every value: no complete date (a year with month and day, or with
//!   day-of-year), time fields without an hour (for example `h` without `a`), seconds without
//!   minutes, or a fraction without seconds. This includes `a` without an hour, which Java 17
//!   quietly resolves to 06:00 or 18:00.
//! * A value without any time field (`yyyy-MM-dd`, or a time in an optional section that is
//!   absent) means the start of that day; Java's `LocalDateTime.parse` would fail.
//! * The letters for week-based fields (`Y w W e c`), aligned week (`F`), quarters (`Q q`),
//!   milli- and nano-of-day (`A N`), day periods (`B`), modified Julian day (`g`), generic zone
//!   names (`v`) and padding (`p`), and the narrow text forms (`MMMMM`, `EEEEE`, `GGGGG`), are
//!   rejected by [`TimestampFormat::new`] as unsupported.
//! * Zone rules come from the `chrono-tz` crate (IANA tzdb), not from the JDK's copy; the data
//!   can differ for zones that changed recently and for pre-1970 history. Beyond 2099, where
//!   `chrono-tz`'s table ends, the rules of an equivalent year in 2072..=2099 (same weekday of
//!   January 1st and leap-ness) are used, which matches Java's "last rules" for all zones whose
//!   rules are stable by then.
//! * Region ids are the ones `chrono-tz` knows, which are nearly those of the JDK: the JDK's
//!   legacy `SystemV/...` ids are missing, and `chrono-tz`'s `EST`, `MST`, `HST` and `ROC`, which
//!   the JDK does not have, are refused (as `z` names, `EST`, `MST` and `HST` still work).
//! * `iso8601` also accepts a space between date and time, offsets without colon or minutes, a
//!   bracketed zone without an offset, and only four-digit years.
//! * Values are matched byte by byte: digits are ASCII only (Java's default `DecimalStyle`
//!   agrees), and text (month and day names, `AM`/`PM`, zone names) is case-sensitive, as in
//!   Java's default strict parsing.
//! * Instants whose epoch milliseconds overflow an `i64` (beyond about 292 million years) are
//!   rejected, as Java's `toEpochMilli` would throw.
//!
//! Error messages name the problem and its position in the pattern (positions count characters
//! from 0); they never contain a parsed value.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::{GapInfo, Tz};

/// A format or time zone that cannot be used: the message names the problem and its position in
/// the pattern (never a record value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    fn config(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A compiled timestamp format. Cheap to clone, Send + Sync.
///
/// ```ignore
/// use keylink_core::timestamp::TimestampFormat;
/// let f = TimestampFormat::new("yyyy-MM-dd HH:mm:ss", Some("Europe/Amsterdam"))?;
/// assert_eq!(f.parse("2024-03-01 12:00:00"), Some(1_709_290_800_000));
/// assert_eq!(f.parse("not a date"), None);
/// ```
#[derive(Debug, Clone)]
pub struct TimestampFormat {
    kind: Kind,
    zone: ZoneVal,
    cache: OffsetCache,
}

impl TimestampFormat {
    /// Compiles a pattern. Errors (`Error::config`) name the problem and its position in the
    /// *pattern*, never a value: "unsupported pattern letter 'Q' at position 5", "unknown
    /// pattern letter 'b' at position 11", "unclosed quote starting at position 11", "unknown
    /// time zone 'Europe/Amsterdm'", "pattern has no complete date: ...".
    ///
    /// `format` is `epoch_millis`, `epoch_seconds`, `iso8601` or a Java `DateTimeFormatter`
    /// pattern (see the module documentation). `default_time_zone` is an IANA zone id, `UTC`,
    /// `GMT`, `Z`, an offset such as `+01:00`, or `UTC`/`GMT` followed by an offset; it applies to
    /// values without their own offset or zone. `None` means UTC.
    pub fn new(format: &str, default_time_zone: Option<&str>) -> Result<Self> {
        let kind = match format {
            "epoch_millis" => Kind::EpochMillis,
            "epoch_seconds" => Kind::EpochSeconds,
            "iso8601" => Kind::Iso8601,
            pattern => Kind::Pattern(compile(pattern)?.into()),
        };
        let zone = match default_time_zone {
            None => ZoneVal::Fixed(0),
            Some(id) => parse_zone_config(id)?,
        };
        Ok(TimestampFormat {
            kind,
            zone,
            cache: OffsetCache::new(),
        })
    }

    /// Parses one value to epoch milliseconds; `None` when the value does not match (the caller
    /// counts the record as rejected). Never panics and does not allocate.
    pub fn parse(&self, value: &str) -> Option<i64> {
        let s = value.as_bytes();
        match &self.kind {
            Kind::EpochMillis => value.parse::<i64>().ok(),
            Kind::EpochSeconds => parse_epoch_seconds(s),
            Kind::Iso8601 => self.parse_iso(s),
            Kind::Pattern(items) => {
                let mut ctx = Ctx {
                    s,
                    p: Parsed::EMPTY,
                    abort: false,
                };
                let end = parse_items(items, &mut ctx, 0)?;
                if end != s.len() {
                    return None;
                }
                self.resolve(&ctx.p)
            }
        }
    }

    /// The time zone used for values without an offset or zone of their own, as given to
    /// [`TimestampFormat::new`] (UTC when none was given).
    pub fn default_time_zone(&self) -> String {
        match self.zone {
            ZoneVal::Region(tz) => tz.name().to_string(),
            ZoneVal::Fixed(0) => "UTC".to_string(),
            ZoneVal::Fixed(o) => format_offset(o),
        }
    }

    /// Resolves parsed fields like Java's `Parsed.resolve` with `ResolverStyle.SMART`.
    fn resolve(&self, p: &Parsed) -> Option<i64> {
        // ---- year
        let mut year = p.get(Field::Year);
        let mut era_used = false;
        if let Some(yoe) = p.get(Field::YearOfEra) {
            if !(1..=1_000_000_000).contains(&yoe) {
                return None;
            }
            let y = match p.get(Field::Era) {
                Some(era) => {
                    era_used = true;
                    if era == 1 { yoe } else { 1 - yoe }
                }
                None if year.is_none_or(|y| y > 0) => yoe,
                None => 1 - yoe,
            };
            if year.is_some_and(|old| old != y) {
                return None;
            }
            year = Some(y);
        }
        let year = year?;
        if !(-999_999_999..=999_999_999).contains(&year) {
            return None;
        }

        // ---- date
        let month = p.get(Field::Month);
        let dom = p.get(Field::DayOfMonth);
        let doy = p.get(Field::DayOfYear);
        let (days, used_md) = if let (Some(m), Some(d)) = (month, dom) {
            if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                return None;
            }
            (
                days_from_civil(year, m, d.min(days_in_month(year, m))),
                true,
            )
        } else if let Some(dy) = doy {
            if !(1..=366).contains(&dy) || (dy == 366 && !is_leap(year)) {
                return None;
            }
            (days_from_civil(year, 1, 1) + dy - 1, false)
        } else {
            return None;
        };
        // cross-check the date fields that were not used to build the date
        if !used_md {
            let (_, m, d) = civil_from_days(days);
            if month.is_some_and(|v| v != m) || dom.is_some_and(|v| v != d) {
                return None;
            }
        }
        if used_md && doy.is_some_and(|v| v != days - days_from_civil(year, 1, 1) + 1) {
            return None;
        }
        if p.get(Field::DayOfWeek)
            .is_some_and(|v| v != day_of_week(days))
        {
            return None;
        }
        if !era_used && p.get(Field::Era).is_some_and(|v| v != i64::from(year >= 1)) {
            return None;
        }

        // ---- time
        let mut hod = p.get(Field::HourOfDay);
        if let Some(k) = p.get(Field::ClockHourOfDay) {
            if k != 0 && !(1..=24).contains(&k) {
                return None;
            }
            let v = if k == 24 { 0 } else { k };
            if hod.is_some_and(|h| h != v) {
                return None;
            }
            hod = Some(v);
        }
        let mut hoap = p.get(Field::HourOfAmPm);
        if let Some(h) = p.get(Field::ClockHourOfAmPm) {
            if h != 0 && !(1..=12).contains(&h) {
                return None;
            }
            let v = if h == 12 { 0 } else { h };
            if hoap.is_some_and(|x| x != v) {
                return None;
            }
            hoap = Some(v);
        }
        let mut ampm = p.get(Field::AmPm);
        if let (Some(ap), Some(hp)) = (ampm, hoap) {
            if !(0..=11).contains(&hp) {
                return None;
            }
            let v = ap * 12 + hp;
            if hod.is_some_and(|h| h != v) {
                return None;
            }
            hod = Some(v);
            ampm = None;
            hoap = None;
        }
        let moh = p.get(Field::Minute);
        let som = p.get(Field::Second);
        let nos = p.get(Field::Nano);
        let (secs_of_day, nanos, extra_day) = match hod {
            Some(h) => {
                if (moh.is_none() && (som.is_some() || nos.is_some()))
                    || (moh.is_some() && som.is_none() && nos.is_some())
                {
                    return None;
                }
                let (m, s, n) = (moh.unwrap_or(0), som.unwrap_or(0), nos.unwrap_or(0));
                if !(0..=59).contains(&m) || !(0..=999_999_999).contains(&n) {
                    return None;
                }
                if h == 24 && m == 0 && s == 0 && n == 0 {
                    (0, 0, 1)
                } else {
                    if !(0..=23).contains(&h) || !(0..=59).contains(&s) {
                        return None;
                    }
                    (h * 3600 + m * 60 + s, n, 0)
                }
            }
            None => {
                if ampm.is_some() || hoap.is_some() || moh.is_some() || som.is_some() {
                    return None;
                }
                if nos.is_some() {
                    return None;
                }
                (0, 0, 0)
            }
        };
        let hour = secs_of_day / 3600;
        if hoap.is_some_and(|v| !(0..=11).contains(&v) || v != hour % 12)
            || ampm.is_some_and(|v| v != hour / 12)
        {
            return None;
        }

        // ---- instant
        let days = days + extra_day;
        let local = days * 86_400 + secs_of_day;
        let offset = match p.get(Field::Offset) {
            Some(o) => {
                if !(-MAX_OFFSET..=MAX_OFFSET).contains(&o) {
                    return None;
                }
                o as i32
            }
            None => self.zone_offset(p.zone, local, days)?,
        };
        to_millis(local, offset, nanos)
    }

    /// The offset for a local date-time: of the value's own zone, else of the default zone.
    fn zone_offset(&self, zone: Option<ZoneVal>, local: i64, days: i64) -> Option<i32> {
        match zone {
            Some(ZoneVal::Fixed(o)) => Some(o),
            Some(ZoneVal::Region(tz)) => region_offset(tz, local, days),
            None => match self.zone {
                ZoneVal::Fixed(o) => Some(o),
                ZoneVal::Region(tz) => self.cached_offset(tz, local, days),
            },
        }
    }

    /// [`region_offset`] for the default zone, remembering the last local day without a
    /// transition (records tend to come in time order).
    fn cached_offset(&self, tz: Tz, local: i64, days: i64) -> Option<i32> {
        let Ok(day) = i32::try_from(days) else {
            return region_offset(tz, local, days);
        };
        if let Some(o) = self.cache.get(day) {
            return Some(o);
        }
        let start = days * 86_400;
        if let (Some(a), Some(b)) = (
            single_offset(tz, start, days),
            single_offset(tz, start + 86_399, days),
        ) && a == b
        {
            self.cache.set(day, a);
            return Some(a);
        }
        region_offset(tz, local, days)
    }

    fn parse_iso(&self, s: &[u8]) -> Option<i64> {
        if s.len() < 10 || s[4] != b'-' || s[7] != b'-' {
            return None;
        }
        let y = digits(s, 0, 4)?;
        let m = digits(s, 5, 2)?;
        let d = digits(s, 8, 2)?;
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        let days = days_from_civil(y, m, d);
        let mut pos = 10;
        let mut secs = 0;
        let mut nanos = 0;
        if let Some(b'T' | b't' | b' ') = s.get(pos) {
            let h = digits(s, pos + 1, 2)?;
            if s.get(pos + 3) != Some(&b':') {
                return None;
            }
            let mi = digits(s, pos + 4, 2)?;
            pos += 6;
            let mut sec = 0;
            if s.get(pos) == Some(&b':') {
                sec = digits(s, pos + 1, 2)?;
                pos += 3;
                if s.get(pos) == Some(&b'.') {
                    // like Java's ISO_LOCAL_TIME, 0 to 9 digits after the point
                    let n = count_digits(s, pos + 1, 10);
                    if n > 9 {
                        return None;
                    }
                    nanos = digits(s, pos + 1, n)? * POW10[9 - n];
                    pos += 1 + n;
                }
            }
            if h > 23 || mi > 59 || sec > 59 {
                return None;
            }
            secs = h * 3600 + mi * 60 + sec;
        }
        let mut offset = None;
        match s.get(pos) {
            Some(b'Z' | b'z') => {
                offset = Some(0);
                pos += 1;
            }
            Some(b'+' | b'-') => {
                let (o, end) = parse_lenient_offset(s, pos)?;
                offset = Some(o);
                pos = end;
            }
            _ => {}
        }
        let mut zone = None;
        if s.get(pos) == Some(&b'[') {
            let close = pos + 1 + s.get(pos + 1..)?.iter().position(|&b| b == b']')?;
            let (z, end) = parse_zone(ZoneStyle::Id, &s[..close], pos + 1)?;
            if end != close {
                return None;
            }
            zone = Some(z);
            pos = close + 1;
        }
        if pos != s.len() {
            return None;
        }
        let local = days * 86_400 + secs;
        let offset = match offset {
            Some(o) => o,
            None => self.zone_offset(zone, local, days)?,
        };
        to_millis(local, offset, nanos)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    EpochMillis,
    EpochSeconds,
    Iso8601,
    Pattern(Arc<[Item]>),
}

/// A zone: a fixed offset in seconds east of UTC, or a tzdb region.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ZoneVal {
    Fixed(i32),
    Region(Tz),
}

/// The largest offset Java's `ZoneOffset` allows, in seconds.
const MAX_OFFSET: i64 = 18 * 3600;

/// The last (local day, offset) seen for the default zone, packed in one atomic word so that a
/// shared `TimestampFormat` stays `Sync` without a lock.
struct OffsetCache(AtomicU64);

impl OffsetCache {
    const EMPTY: u64 = pack(i32::MIN, i32::MIN);

    fn new() -> Self {
        OffsetCache(AtomicU64::new(Self::EMPTY))
    }

    fn get(&self, day: i32) -> Option<i32> {
        let v = self.0.load(Ordering::Relaxed);
        let (d, o) = unpack(v);
        (d == day && o != i32::MIN).then_some(o)
    }

    fn set(&self, day: i32, offset: i32) {
        self.0.store(pack(day, offset), Ordering::Relaxed);
    }
}

const fn pack(day: i32, offset: i32) -> u64 {
    ((day as u32 as u64) << 32) | (offset as u32 as u64)
}

const fn unpack(v: u64) -> (i32, i32) {
    ((v >> 32) as u32 as i32, v as u32 as i32)
}

impl Clone for OffsetCache {
    fn clone(&self) -> Self {
        OffsetCache(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for OffsetCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OffsetCache")
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled pattern

/// The fields a pattern can set, as Java's `ChronoField`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Era,
    YearOfEra,
    Year,
    Month,
    DayOfMonth,
    DayOfYear,
    DayOfWeek,
    AmPm,
    HourOfAmPm,
    ClockHourOfAmPm,
    HourOfDay,
    ClockHourOfDay,
    Minute,
    Second,
    Nano,
    Offset,
}

const NFIELDS: usize = 16;

impl Field {
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

const TIME_FIELDS: u32 = Field::AmPm.bit()
    | Field::HourOfAmPm.bit()
    | Field::ClockHourOfAmPm.bit()
    | Field::HourOfDay.bit()
    | Field::ClockHourOfDay.bit()
    | Field::Minute.bit()
    | Field::Second.bit()
    | Field::Nano.bit();

/// Java's `SignStyle`, for the three styles `ofPattern` uses, parsed strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignStyle {
    /// `-` allowed, `+` not.
    Normal,
    /// No sign.
    NotNegative,
    /// `-` allowed; `+` required exactly when there are more digits than the minimum.
    ExceedsPad,
}

/// Java's `NumberPrinterParser` (and `ReducedPrinterParser` when `reduced`).
#[derive(Debug, Clone, Copy)]
struct NumberItem {
    field: Field,
    min: u8,
    max: u8,
    sign: SignStyle,
    /// Total width of the fixed-width fields that directly follow (adjacent value parsing).
    subsequent: u16,
    /// `yy`/`uu`: two digits on base year 2000.
    reduced: bool,
}

impl NumberItem {
    fn is_fixed(&self) -> bool {
        self.min == self.max && self.sign == SignStyle::NotNegative
    }
}

/// Which offset parts an `OffsetIdPrinterParser` pattern has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Absent,
    Optional,
    Mandatory,
}

/// Java's `OffsetIdPrinterParser` for the padded-hour patterns (`+HH...`).
#[derive(Debug, Clone, Copy)]
struct OffsetItem {
    colon: bool,
    minutes: Part,
    seconds: Part,
    no_offset: &'static str,
}

/// `+HH:MM:ss`, used for offsets inside zone ids.
const ID_OFFSET: OffsetItem = OffsetItem {
    colon: true,
    minutes: Part::Mandatory,
    seconds: Part::Optional,
    no_offset: "Z",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneStyle {
    /// `VV`: zone ids.
    Id,
    /// `z`: zone ids and short names.
    Short,
    /// `zzzz`: zone ids and full names.
    Full,
}

#[derive(Debug, Clone)]
enum Item {
    Literal(Box<[u8]>),
    Number(NumberItem),
    /// `S`..`SSSSSSSSS`: exactly this many fraction digits.
    Fraction(u8),
    Text(Field, &'static [(&'static str, i64)]),
    Offset(OffsetItem),
    /// `O`/`ZZZZ`/`OOOO`: `GMT+1` (short) or `GMT+01:00` (full).
    LocalizedOffset {
        full: bool,
    },
    Zone(ZoneStyle),
    Optional(Box<[Item]>),
}

const ERA_SHORT: &[(&str, i64)] = &[("AD", 1), ("BC", 0)];
const ERA_FULL: &[(&str, i64)] = &[("Before Christ", 0), ("Anno Domini", 1)];
const AMPM: &[(&str, i64)] = &[("AM", 0), ("PM", 1)];
const MONTH_SHORT: &[(&str, i64)] = &[
    ("Jan", 1),
    ("Feb", 2),
    ("Mar", 3),
    ("Apr", 4),
    ("May", 5),
    ("Jun", 6),
    ("Jul", 7),
    ("Aug", 8),
    ("Sep", 9),
    ("Oct", 10),
    ("Nov", 11),
    ("Dec", 12),
];
// Longest first, as Java tries them (none is a prefix of another, so the order is moot).
const MONTH_FULL: &[(&str, i64)] = &[
    ("September", 9),
    ("February", 2),
    ("November", 11),
    ("December", 12),
    ("January", 1),
    ("October", 10),
    ("August", 8),
    ("March", 3),
    ("April", 4),
    ("June", 6),
    ("July", 7),
    ("May", 5),
];
const DAY_SHORT: &[(&str, i64)] = &[
    ("Mon", 1),
    ("Tue", 2),
    ("Wed", 3),
    ("Thu", 4),
    ("Fri", 5),
    ("Sat", 6),
    ("Sun", 7),
];
const DAY_FULL: &[(&str, i64)] = &[
    ("Wednesday", 3),
    ("Thursday", 4),
    ("Saturday", 6),
    ("Tuesday", 2),
    ("Monday", 1),
    ("Friday", 5),
    ("Sunday", 7),
];

/// Builds the item list of one (optional) section, tracking Java's "active value parser" for
/// adjacent value parsing.
#[derive(Default)]
struct Section {
    items: Vec<Item>,
    active: Option<usize>,
}

impl Section {
    /// Java's `appendValue(NumberPrinterParser)`.
    fn value(&mut self, item: Item) {
        let (fixed, width) = match &item {
            Item::Number(n) => (n.is_fixed(), u16::from(n.max)),
            Item::Fraction(w) => (true, u16::from(*w)),
            _ => (false, 0),
        };
        let idx = self.items.len();
        self.items.push(item);
        match self.active {
            Some(a) if fixed => {
                if let Item::Number(n) = &mut self.items[a] {
                    n.subsequent = n.subsequent.saturating_add(width);
                }
            }
            Some(a) => {
                // Java's withFixedWidth(): the previous active parser forgets its subsequent width.
                if let Item::Number(n) = &mut self.items[a] {
                    n.subsequent = 0;
                }
                self.active = Some(idx);
            }
            None => self.active = Some(idx),
        }
    }

    /// Java's `appendInternal` for anything that is not a value: ends adjacent value parsing.
    fn other(&mut self, item: Item) {
        self.active = None;
        if let (Item::Literal(new), Some(Item::Literal(last))) = (&item, self.items.last_mut()) {
            let mut joined = last.to_vec();
            joined.extend_from_slice(new);
            *last = joined.into_boxed_slice();
            return;
        }
        self.items.push(item);
    }
}

const MAX_NESTING: usize = 16;

/// Compiles a Java `DateTimeFormatter` pattern.
fn compile(pattern: &str) -> Result<Vec<Item>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut stack = vec![Section::default()];
    // which fields the pattern sets (in any section), and where each first appears
    let mut present = 0u32;
    let mut first_pos = [usize::MAX; NFIELDS];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let section = stack.last_mut().expect("the stack is never empty");
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i] == c {
                i += 1;
            }
            let count = i - start;
            if let Some(field) = letter(section, c, count, start)? {
                present |= field.bit();
                if first_pos[field as usize] == usize::MAX {
                    first_pos[field as usize] = start;
                }
            }
        } else if c == '\'' {
            let start = i;
            i += 1;
            let mut lit = String::new();
            loop {
                if i >= chars.len() {
                    return Err(Error::config(format!(
                        "unclosed quote starting at position {start}"
                    )));
                }
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        lit.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                lit.push(chars[i]);
                i += 1;
            }
            if lit.is_empty() {
                lit.push('\'');
            }
            section.other(Item::Literal(lit.into_bytes().into_boxed_slice()));
        } else if c == '[' {
            if stack.len() > MAX_NESTING {
                return Err(Error::config(format!(
                    "optional sections nested too deeply at position {i}"
                )));
            }
            stack.push(Section::default());
            i += 1;
        } else if c == ']' {
            if stack.len() == 1 {
                return Err(Error::config(format!(
                    "']' without a matching '[' at position {i}"
                )));
            }
            close_section(&mut stack);
            i += 1;
        } else if matches!(c, '{' | '}' | '#') {
            return Err(Error::config(format!(
                "reserved character '{c}' at position {i}"
            )));
        } else {
            let mut buf = [0u8; 4];
            let lit = c.encode_utf8(&mut buf).as_bytes();
            section.other(Item::Literal(lit.into()));
            i += 1;
        }
    }
    while stack.len() > 1 {
        close_section(&mut stack);
    }
    check_fields(present, &first_pos)?;
    Ok(stack.pop().map(|s| s.items).unwrap_or_default())
}

fn close_section(stack: &mut Vec<Section>) {
    if let Some(inner) = stack.pop()
        && let Some(outer) = stack.last_mut()
    {
        outer.other(Item::Optional(inner.items.into_boxed_slice()));
    }
}

/// Checks that a pattern can produce an instant at all (a deliberate difference from Java,
/// which would instead fail on every value).
fn check_fields(present: u32, first_pos: &[usize; NFIELDS]) -> Result<()> {
    let has = |f: Field| present & f.bit() != 0;
    let date = (has(Field::Year) || has(Field::YearOfEra))
        && ((has(Field::Month) && has(Field::DayOfMonth)) || has(Field::DayOfYear));
    if !date {
        return Err(Error::config(
            "pattern has no complete date: it needs a year ('y' or 'u') with month and \
             day-of-month ('M' and 'd') or with day-of-year ('D')",
        ));
    }
    if present & TIME_FIELDS == 0 {
        return Ok(());
    }
    let hour = has(Field::HourOfDay)
        || has(Field::ClockHourOfDay)
        || (has(Field::AmPm) && (has(Field::HourOfAmPm) || has(Field::ClockHourOfAmPm)));
    if !hour {
        let (letter, field) = [
            ('h', Field::ClockHourOfAmPm),
            ('K', Field::HourOfAmPm),
            ('a', Field::AmPm),
            ('m', Field::Minute),
            ('s', Field::Second),
            ('S', Field::Nano),
        ]
        .into_iter()
        .filter(|(_, f)| has(*f))
        .min_by_key(|(_, f)| first_pos[*f as usize])
        .unwrap_or(('H', Field::HourOfDay));
        let hint = match letter {
            'h' | 'K' => "needs the AM/PM marker 'a' to give an hour",
            'a' => "needs an hour ('h' or 'K')",
            _ => "needs an hour ('H', 'k', or 'h'/'K' with 'a')",
        };
        return Err(Error::config(format!(
            "pattern letter '{letter}' at position {} {hint}",
            first_pos[field as usize]
        )));
    }
    if has(Field::Second) && !has(Field::Minute) {
        return Err(Error::config(format!(
            "pattern has seconds ('s' at position {}) but no minutes ('m')",
            first_pos[Field::Second as usize]
        )));
    }
    if has(Field::Nano) && !(has(Field::Minute) && has(Field::Second)) {
        return Err(Error::config(format!(
            "pattern has a fraction of second (at position {}) but no minutes and seconds \
             ('m' and 's')",
            first_pos[Field::Nano as usize]
        )));
    }
    Ok(())
}

/// Appends the item for `count` repetitions of pattern letter `c` at `pos`, like Java's
/// `DateTimeFormatterBuilder.parsePattern`. Returns the field it sets.
fn letter(section: &mut Section, c: char, count: usize, pos: usize) -> Result<Option<Field>> {
    let too_many = || {
        Err(Error::config(format!(
            "too many pattern letters '{c}' ({count}) at position {pos}"
        )))
    };
    let narrow = || {
        Err(Error::config(format!(
            "pattern letter '{c}' repeated 5 times (narrow text) at position {pos} is not supported"
        )))
    };
    let num = |field, min: usize, max: usize, sign| {
        Item::Number(NumberItem {
            field,
            min: min as u8,
            max: max as u8,
            sign,
            subsequent: 0,
            reduced: false,
        })
    };
    let field = match c {
        'G' => {
            match count {
                1..=3 => section.other(Item::Text(Field::Era, ERA_SHORT)),
                4 => section.other(Item::Text(Field::Era, ERA_FULL)),
                5 => return narrow(),
                _ => return too_many(),
            }
            Field::Era
        }
        'u' | 'y' => {
            let field = if c == 'u' {
                Field::Year
            } else {
                Field::YearOfEra
            };
            match count {
                2 => section.value(Item::Number(NumberItem {
                    field,
                    min: 2,
                    max: 2,
                    sign: SignStyle::NotNegative,
                    subsequent: 0,
                    reduced: true,
                })),
                1 | 3 => section.value(num(field, count, 19, SignStyle::Normal)),
                4..=19 => section.value(num(field, count, 19, SignStyle::ExceedsPad)),
                _ => return too_many(),
            }
            field
        }
        'M' | 'L' => {
            match count {
                1 => section.value(num(Field::Month, 1, 19, SignStyle::Normal)),
                2 => section.value(num(Field::Month, 2, 2, SignStyle::NotNegative)),
                3 => section.other(Item::Text(Field::Month, MONTH_SHORT)),
                4 => section.other(Item::Text(Field::Month, MONTH_FULL)),
                5 => return narrow(),
                _ => return too_many(),
            }
            Field::Month
        }
        'd' | 'h' | 'H' | 'k' | 'K' | 'm' | 's' => {
            let field = match c {
                'd' => Field::DayOfMonth,
                'h' => Field::ClockHourOfAmPm,
                'H' => Field::HourOfDay,
                'k' => Field::ClockHourOfDay,
                'K' => Field::HourOfAmPm,
                'm' => Field::Minute,
                _ => Field::Second,
            };
            match count {
                1 => section.value(num(field, 1, 19, SignStyle::Normal)),
                2 => section.value(num(field, 2, 2, SignStyle::NotNegative)),
                _ => return too_many(),
            }
            field
        }
        'D' => {
            match count {
                1 => section.value(num(Field::DayOfYear, 1, 19, SignStyle::Normal)),
                2 | 3 => section.value(num(Field::DayOfYear, count, 3, SignStyle::NotNegative)),
                _ => return too_many(),
            }
            Field::DayOfYear
        }
        'E' => {
            match count {
                1..=3 => section.other(Item::Text(Field::DayOfWeek, DAY_SHORT)),
                4 => section.other(Item::Text(Field::DayOfWeek, DAY_FULL)),
                5 => return narrow(),
                _ => return too_many(),
            }
            Field::DayOfWeek
        }
        'a' => {
            if count != 1 {
                return too_many();
            }
            section.other(Item::Text(Field::AmPm, AMPM));
            Field::AmPm
        }
        'S' => {
            if count > 9 {
                return too_many();
            }
            section.value(Item::Fraction(count as u8));
            Field::Nano
        }
        'n' => {
            if count > 19 {
                return too_many();
            }
            section.value(num(Field::Nano, count, 19, SignStyle::NotNegative));
            Field::Nano
        }
        'V' => {
            if count != 2 {
                return Err(Error::config(format!(
                    "pattern letter 'V' at position {pos} must appear exactly twice ('VV')"
                )));
            }
            section.other(Item::Zone(ZoneStyle::Id));
            return Ok(None);
        }
        'z' => {
            match count {
                1..=3 => section.other(Item::Zone(ZoneStyle::Short)),
                4 => section.other(Item::Zone(ZoneStyle::Full)),
                _ => return too_many(),
            }
            return Ok(None);
        }
        'Z' => {
            match count {
                1..=3 => section.other(Item::Offset(OffsetItem {
                    colon: false,
                    minutes: Part::Mandatory,
                    seconds: Part::Absent,
                    no_offset: "+0000",
                })),
                4 => section.other(Item::LocalizedOffset { full: true }),
                5 => section.other(Item::Offset(ID_OFFSET)),
                _ => return too_many(),
            }
            Field::Offset
        }
        'O' => {
            match count {
                1 => section.other(Item::LocalizedOffset { full: false }),
                4 => section.other(Item::LocalizedOffset { full: true }),
                _ => {
                    return Err(Error::config(format!(
                        "pattern letter 'O' at position {pos} must appear once or four times"
                    )));
                }
            }
            Field::Offset
        }
        'X' | 'x' => {
            if count > 5 {
                return too_many();
            }
            // Java's OffsetIdPrinterParser.PATTERNS[count + (count == 1 ? 0 : 1)]
            let (colon, minutes, seconds) = match count {
                1 => (false, Part::Optional, Part::Absent),    // +HHmm
                2 => (false, Part::Mandatory, Part::Absent),   // +HHMM
                3 => (true, Part::Mandatory, Part::Absent),    // +HH:MM
                4 => (false, Part::Mandatory, Part::Optional), // +HHMMss
                _ => (true, Part::Mandatory, Part::Optional),  // +HH:MM:ss
            };
            let no_offset = match (c, count) {
                ('X', _) => "Z",
                (_, 1) => "+00",
                (_, 2 | 4) => "+0000",
                _ => "+00:00",
            };
            section.other(Item::Offset(OffsetItem {
                colon,
                minutes,
                seconds,
                no_offset,
            }));
            Field::Offset
        }
        'Q' | 'q' | 'Y' | 'w' | 'W' | 'e' | 'c' | 'F' | 'A' | 'N' | 'B' | 'g' | 'v' | 'p' => {
            return Err(Error::config(format!(
                "unsupported pattern letter '{c}' at position {pos}"
            )));
        }
        _ => {
            return Err(Error::config(format!(
                "unknown pattern letter '{c}' at position {pos}"
            )));
        }
    };
    Ok(Some(field))
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parsed field values, like Java's `Parsed` (a plain value, copied to back out of an optional
/// section).
#[derive(Clone, Copy)]
struct Parsed {
    set: u32,
    vals: [i64; NFIELDS],
    zone: Option<ZoneVal>,
}

impl Parsed {
    const EMPTY: Parsed = Parsed {
        set: 0,
        vals: [0; NFIELDS],
        zone: None,
    };

    fn get(&self, f: Field) -> Option<i64> {
        (self.set & f.bit() != 0).then(|| self.vals[f as usize])
    }

    /// Sets a field; false when it already has another value (Java's `setParsedField`).
    fn put(&mut self, f: Field, v: i64) -> bool {
        if self.set & f.bit() != 0 {
            return self.vals[f as usize] == v;
        }
        self.set |= f.bit();
        self.vals[f as usize] = v;
        true
    }
}

struct Ctx<'a> {
    s: &'a [u8],
    p: Parsed,
    /// Set when Java would throw (rather than fail to match), which an optional section does
    /// not catch.
    abort: bool,
}

fn parse_items(items: &[Item], ctx: &mut Ctx<'_>, mut pos: usize) -> Option<usize> {
    let s = ctx.s;
    for item in items {
        pos = match item {
            Item::Literal(lit) => {
                let matches = match **lit {
                    [b] => s.get(pos) == Some(&b),
                    _ => s.get(pos..)?.starts_with(lit),
                };
                if !matches {
                    return None;
                }
                pos + lit.len()
            }
            Item::Number(n) => {
                let (v, end) = parse_number(n, s, pos)?;
                if !ctx.p.put(n.field, v) {
                    return None;
                }
                end
            }
            Item::Fraction(w) => {
                let w = usize::from(*w);
                let v = digits(s, pos, w)? * POW10[9 - w];
                if !ctx.p.put(Field::Nano, v) {
                    return None;
                }
                pos + w
            }
            Item::Text(field, names) => {
                let rest = s.get(pos..)?;
                let (name, v) = names
                    .iter()
                    .find(|(name, _)| rest.starts_with(name.as_bytes()))?;
                if !ctx.p.put(*field, *v) {
                    return None;
                }
                pos + name.len()
            }
            Item::Offset(o) => match parse_offset_id(o, s, pos) {
                OffsetParse::Ok(off, end) => {
                    if !ctx.p.put(Field::Offset, i64::from(off)) {
                        return None;
                    }
                    end
                }
                OffsetParse::NoMatch => return None,
                OffsetParse::Invalid => {
                    ctx.abort = true;
                    return None;
                }
            },
            Item::LocalizedOffset { full } => match parse_localized_offset(*full, s, pos) {
                OffsetParse::Ok(off, end) => {
                    if !ctx.p.put(Field::Offset, i64::from(off)) {
                        return None;
                    }
                    end
                }
                OffsetParse::NoMatch => return None,
                OffsetParse::Invalid => {
                    ctx.abort = true;
                    return None;
                }
            },
            Item::Zone(style) => {
                let (z, end) = parse_zone(*style, s, pos)?;
                ctx.p.zone = Some(z);
                end
            }
            Item::Optional(inner) => {
                let saved = ctx.p;
                match parse_items(inner, ctx, pos) {
                    Some(end) => end,
                    None if ctx.abort => return None,
                    None => {
                        ctx.p = saved;
                        pos
                    }
                }
            }
        };
    }
    Some(pos)
}

const POW10: [i64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Exactly `n` (at most 18) ASCII digits at `pos`.
fn digits(s: &[u8], pos: usize, n: usize) -> Option<i64> {
    let d = s.get(pos..pos.checked_add(n)?)?;
    let mut v = 0i64;
    for &b in d {
        let x = b.wrapping_sub(b'0');
        if x > 9 {
            return None;
        }
        v = v * 10 + i64::from(x);
    }
    Some(v)
}

/// How many ASCII digits follow `pos`, up to `max`.
fn count_digits(s: &[u8], pos: usize, max: usize) -> usize {
    let mut n = 0;
    while n < max && s.get(pos + n).is_some_and(u8::is_ascii_digit) {
        n += 1;
    }
    n
}

/// Java's `NumberPrinterParser.parse` in strict mode.
fn parse_number(n: &NumberItem, s: &[u8], pos: usize) -> Option<(i64, usize)> {
    let min = usize::from(n.min);
    if n.subsequent == 0 && n.is_fixed() {
        // fast path: exactly `min` digits
        let v = digits(s, pos, min)?;
        return Some((reduce(n, v, min), pos + min));
    }
    let first = *s.get(pos)?;
    let (negative, positive) = match first {
        b'+' if n.sign == SignStyle::ExceedsPad => (false, true),
        b'-' if n.sign != SignStyle::NotNegative => (true, false),
        b'+' | b'-' => return None,
        _ => (false, false),
    };
    let start = pos + usize::from(negative || positive);
    if start + min > s.len() {
        return None;
    }
    let subsequent = usize::from(n.subsequent);
    let mut max = usize::from(n.max) + subsequent;
    let count = count_digits(s, start, max);
    if count < min {
        return None;
    }
    if subsequent > 0 {
        max = min.max(count.saturating_sub(subsequent));
    }
    let mut len = count.min(max);
    // at most 19 digits (max <= 19 once the subsequent width is taken off): fits a u64
    let mut total: u64 = 0;
    for &b in &s[start..start + len] {
        total = total * 10 + u64::from(b - b'0');
    }
    if negative {
        if total == 0 {
            return None; // minus zero
        }
    } else if n.sign == SignStyle::ExceedsPad {
        if positive && len <= min {
            return None; // '+' only when the minimum width is exceeded
        }
        if !positive && len > min {
            return None; // and then it is required
        }
    }
    if len > 18 {
        let limit = if negative {
            1u64 << 63
        } else {
            i64::MAX as u64
        };
        if total > limit {
            // Java parses one digit less
            total /= 10;
            len -= 1;
        }
    }
    let v = if negative {
        0i64.wrapping_sub_unsigned(total)
    } else {
        total as i64
    };
    Some((reduce(n, v, len), start + len))
}

/// Java's `ReducedPrinterParser.setValue` with base value 2000 and width 2.
fn reduce(n: &NumberItem, v: i64, len: usize) -> i64 {
    if n.reduced && len == usize::from(n.min) && v >= 0 {
        2000 + v
    } else {
        v
    }
}

enum OffsetParse {
    Ok(i32, usize),
    NoMatch,
    /// Java throws (hour above 23).
    Invalid,
}

/// Java's `OffsetIdPrinterParser.parse` in strict mode, for the padded-hour patterns.
fn parse_offset_id(o: &OffsetItem, s: &[u8], pos: usize) -> OffsetParse {
    let Some(rest) = s.get(pos..) else {
        return OffsetParse::NoMatch;
    };
    if rest.is_empty() {
        return OffsetParse::NoMatch;
    }
    if rest.starts_with(o.no_offset.as_bytes()) {
        return OffsetParse::Ok(0, pos + o.no_offset.len());
    }
    let sign = match rest[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return OffsetParse::NoMatch,
    };
    // Java's parseDigits: optional colon, two digits, at most 59
    let two = |p: usize, colon: bool| -> Option<(i32, usize)> {
        let p = if colon {
            if s.get(p) != Some(&b':') {
                return None;
            }
            p + 1
        } else {
            p
        };
        let v = digits(s, p, 2)?;
        (v <= 59).then_some((v as i32, p + 2))
    };
    let Some((h, mut p)) = two(pos + 1, false) else {
        return OffsetParse::NoMatch;
    };
    let mut m = 0;
    let mut sec = 0;
    if o.minutes != Part::Absent {
        match two(p, o.colon) {
            Some((v, e)) => {
                m = v;
                p = e;
                if o.seconds != Part::Absent {
                    match two(p, o.colon) {
                        Some((v, e)) => {
                            sec = v;
                            p = e;
                        }
                        None if o.seconds == Part::Mandatory => return OffsetParse::NoMatch,
                        None => {}
                    }
                }
            }
            None if o.minutes == Part::Mandatory => return OffsetParse::NoMatch,
            None => {}
        }
    }
    if h > 23 {
        return OffsetParse::Invalid;
    }
    OffsetParse::Ok(sign * (h * 3600 + m * 60 + sec), p)
}

/// Java's `LocalizedOffsetIdPrinterParser.parse` (`GMT`, `GMT+1`, `GMT+01:00`). Where Java reads
/// past the end of the text it throws, which is [`OffsetParse::Invalid`] here.
fn parse_localized_offset(full: bool, s: &[u8], pos: usize) -> OffsetParse {
    use OffsetParse::{Invalid, NoMatch, Ok};
    let end = s.len();
    if !s.get(pos..).is_some_and(|r| r.starts_with(b"GMT")) {
        return NoMatch;
    }
    let mut p = pos + 3;
    let sign = match s.get(p) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok(0, p),
    };
    p += 1;
    // Java's getDigit: -1 for a non-digit, an exception past the end
    let digit = |i: usize| -> Option<i32> {
        let b = *s.get(i)?;
        Some(if b.is_ascii_digit() {
            i32::from(b - b'0')
        } else {
            -1
        })
    };
    let mut h;
    let (mut m, mut sec) = (0, 0);
    if full {
        let (Some(h1), Some(h2), Some(&colon)) = (digit(p), digit(p + 1), s.get(p + 2)) else {
            return Invalid;
        };
        if h1 < 0 || h2 < 0 || colon != b':' {
            return NoMatch;
        }
        h = h1 * 10 + h2;
        let (Some(m1), Some(m2)) = (digit(p + 3), digit(p + 4)) else {
            return Invalid;
        };
        if m1 < 0 || m2 < 0 {
            return NoMatch;
        }
        m = m1 * 10 + m2;
        p += 5;
        if p + 2 < end && s[p] == b':' {
            let (s1, s2) = (digit(p + 1).unwrap_or(-1), digit(p + 2).unwrap_or(-1));
            if s1 >= 0 && s2 >= 0 {
                sec = s1 * 10 + s2;
                p += 3;
            }
        }
    } else {
        let Some(h1) = digit(p) else {
            return Invalid;
        };
        if h1 < 0 {
            return NoMatch;
        }
        h = h1;
        p += 1;
        if p < end {
            if let Some(h2) = digit(p).filter(|d| *d >= 0) {
                h = h * 10 + h2;
                p += 1;
            }
            if p + 2 < end && s[p] == b':' {
                let (m1, m2) = (digit(p + 1).unwrap_or(-1), digit(p + 2).unwrap_or(-1));
                if m1 >= 0 && m2 >= 0 {
                    m = m1 * 10 + m2;
                    p += 3;
                    if p + 2 < end && s[p] == b':' {
                        let (s1, s2) = (digit(p + 1).unwrap_or(-1), digit(p + 2).unwrap_or(-1));
                        if s1 >= 0 && s2 >= 0 {
                            sec = s1 * 10 + s2;
                            p += 3;
                        }
                    }
                }
            }
        }
    }
    Ok(sign * (h * 3600 + m * 60 + sec), p)
}

/// The longest zone id in the tz database is 32 characters.
const MAX_ID_LEN: usize = 40;

/// Java's `ZoneIdPrinterParser.parse` (`VV`) and `ZoneTextPrinterParser.parse` (`z`, `zzzz`).
fn parse_zone(style: ZoneStyle, s: &[u8], pos: usize) -> Option<(ZoneVal, usize)> {
    let rest = s.get(pos..)?;
    let c = *rest.first()?;
    if c == b'+' || c == b'-' {
        return parse_offset_based(s, pos, true);
    }
    if rest.len() >= 2 {
        if c == b'U' && rest[1] == b'T' {
            let p = if rest.get(2) == Some(&b'C') {
                pos + 3
            } else {
                pos + 2
            };
            return parse_offset_based(s, p, false);
        }
        if c == b'G' && rest[1] == b'M' && rest.get(2) == Some(&b'T') {
            if rest.get(3) == Some(&b'0') {
                return Some((ZoneVal::Fixed(0), pos + 4));
            }
            return parse_offset_based(s, pos + 3, false);
        }
    }
    // the longest zone id or name
    let mut best: Option<(Tz, usize)> = None;
    let run = rest
        .iter()
        .take(MAX_ID_LEN)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'))
        .count();
    for len in (1..=run).rev() {
        if let Ok(id) = std::str::from_utf8(&rest[..len])
            && let Some(tz) = lookup_region(id)
        {
            best = Some((tz, len));
            break;
        }
    }
    let names: &[(&str, Tz)] = match style {
        ZoneStyle::Id => &[],
        ZoneStyle::Short => ZONE_SHORT_NAMES,
        ZoneStyle::Full => ZONE_FULL_NAMES,
    };
    if !names.is_empty() {
        let shortest = best.map_or(1, |(_, l)| l.max(1));
        for len in (shortest..=rest.len().min(MAX_ID_LEN)).rev() {
            if let Ok(i) = names.binary_search_by(|(n, _)| n.as_bytes().cmp(&rest[..len])) {
                // a name wins over an id of the same length, as in Java
                best = Some((names[i].1, len));
                break;
            }
        }
    }
    match best {
        Some((tz, len)) => Some((ZoneVal::Region(tz), pos + len)),
        None if c == b'Z' => Some((ZoneVal::Fixed(0), pos + 1)),
        None => None,
    }
}

/// Java's `ZoneIdPrinterParser.parseOffsetBased`: after `UT`, `UTC`, `GMT` (or at a sign when
/// `signed`), an optional `+HH:MM:ss` offset.
fn parse_offset_based(s: &[u8], pos: usize, signed: bool) -> Option<(ZoneVal, usize)> {
    let Some(&c) = s.get(pos) else {
        return (!signed).then_some((ZoneVal::Fixed(0), pos));
    };
    if !signed && (c == b'0' || c == b'Z') {
        return Some((ZoneVal::Fixed(0), pos));
    }
    match parse_offset_id(&ID_OFFSET, s, pos) {
        OffsetParse::Ok(o, end) if signed || c == b'+' || c == b'-' => {
            (i64::from(o).abs() <= MAX_OFFSET).then_some((ZoneVal::Fixed(o), end))
        }
        OffsetParse::Invalid => None,
        _ if signed => None,
        _ => Some((ZoneVal::Fixed(0), pos)),
    }
}

/// An offset as ISO-8601 writes it, parsed leniently: `+HH`, `+HHMM`, `+HH:MM`, `+HHMMSS`,
/// `+HH:MM:SS`.
fn parse_lenient_offset(s: &[u8], pos: usize) -> Option<(i32, usize)> {
    let sign = match s.get(pos)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = digits(s, pos + 1, 2)?;
    let mut p = pos + 3;
    let (mut m, mut sec) = (0, 0);
    let colon = s.get(p) == Some(&b':');
    let q = p + usize::from(colon);
    if let Some(v) = digits(s, q, 2) {
        m = v;
        p = q + 2;
        let q = if colon {
            (s.get(p) == Some(&b':')).then_some(p + 1)
        } else {
            Some(p)
        };
        if let Some(q) = q
            && let Some(v) = digits(s, q, 2)
        {
            sec = v;
            p = q + 2;
        }
    } else if colon {
        return None;
    }
    if h > 18 || m > 59 || sec > 59 {
        return None;
    }
    let total = h * 3600 + m * 60 + sec;
    (total <= MAX_OFFSET).then_some((sign * total as i32, p))
}

/// A `default_time_zone`, like Java's `ZoneId.of`.
fn parse_zone_config(id: &str) -> Result<ZoneVal> {
    let unknown = || Error::config(format!("unknown time zone '{id}'"));
    let offset = |rest: &str| -> Result<ZoneVal> {
        let b = rest.as_bytes();
        let sign = match b.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(unknown()),
        };
        // ZoneOffset.of: +h, +hh, +hhmm, +hh:mm, +hhmmss, +hh:mm:ss
        let d = |p: usize, n: usize| digits(b, p, n).ok_or_else(unknown);
        let (h, m, s) = match b.len() {
            2 => (d(1, 1)?, 0, 0),
            3 => (d(1, 2)?, 0, 0),
            5 => (d(1, 2)?, d(3, 2)?, 0),
            6 if b[3] == b':' => (d(1, 2)?, d(4, 2)?, 0),
            7 => (d(1, 2)?, d(3, 2)?, d(5, 2)?),
            9 if b[3] == b':' && b[6] == b':' => (d(1, 2)?, d(4, 2)?, d(7, 2)?),
            _ => return Err(unknown()),
        };
        let total = h * 3600 + m * 60 + s;
        if h > 18 || m > 59 || s > 59 || total > MAX_OFFSET {
            return Err(unknown());
        }
        Ok(ZoneVal::Fixed(sign * total as i32))
    };
    if id == "Z" {
        return Ok(ZoneVal::Fixed(0));
    }
    if id.starts_with(['+', '-']) {
        return offset(id);
    }
    for prefix in ["UTC", "GMT", "UT"] {
        if let Some(rest) = id.strip_prefix(prefix) {
            if rest.is_empty() {
                return Ok(ZoneVal::Fixed(0));
            }
            if rest.starts_with(['+', '-']) {
                return offset(rest);
            }
        }
    }
    lookup_region(id).map(ZoneVal::Region).ok_or_else(unknown)
}

/// A tzdb region by id, leaving out the few ids that `chrono-tz` has but the JDK does not
/// (`EST`, `MST` and `HST` are fixed offsets there, unlike the zone names of the same spelling).
fn lookup_region(id: &str) -> Option<Tz> {
    if matches!(id, "EST" | "MST" | "HST" | "ROC" | "GMT+0" | "GMT-0") {
        return None;
    }
    Tz::from_str(id).ok()
}

fn format_offset(o: i32) -> String {
    let sign = if o < 0 { '-' } else { '+' };
    let a = o.unsigned_abs();
    if a.is_multiple_of(60) {
        format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
    } else {
        format!("{sign}{:02}:{:02}:{:02}", a / 3600, a / 60 % 60, a % 60)
    }
}

/// `epoch_seconds`: `[+-]digits[.digits]` (either side of the point may be empty, not both),
/// floored to milliseconds like Java's `Instant::toEpochMilli`.
fn parse_epoch_seconds(s: &[u8]) -> Option<i64> {
    let (negative, body) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match body.iter().position(|&b| b == b'.') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[][..]),
    };
    if (int.is_empty() && frac.is_empty()) || int.len() > 20 {
        return None;
    }
    let mut secs: i128 = 0;
    for &b in int {
        if !b.is_ascii_digit() {
            return None;
        }
        secs = secs * 10 + i128::from(b - b'0');
    }
    let mut nanos: i128 = 0;
    let mut sticky = false; // a non-zero digit below the nanosecond
    for (i, &b) in frac.iter().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        if i < 9 {
            nanos += i128::from(b - b'0') * i128::from(POW10[8 - i]);
        } else {
            sticky |= b != b'0';
        }
    }
    let mut total = secs * 1_000_000_000 + nanos;
    if negative {
        total = -total - i128::from(sticky);
    }
    i64::try_from(total.div_euclid(1_000_000)).ok()
}

/// Epoch milliseconds of a local date-time (seconds since 1970-01-01T00:00 local) at `offset`,
/// floored like Java's `Instant::toEpochMilli`; None when it overflows an `i64`.
fn to_millis(local: i64, offset: i32, nanos: i64) -> Option<i64> {
    let secs = i128::from(local) - i128::from(offset);
    i64::try_from(secs * 1000 + i128::from(nanos / 1_000_000)).ok()
}

// ---------------------------------------------------------------------------------------------
// Calendar and zone rules

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ISO day-of-week, Monday = 1 .. Sunday = 7.
fn day_of_week(days: i64) -> i64 {
    (days + 3).rem_euclid(7) + 1
}

/// The last year of `chrono-tz`'s transition tables.
const LAST_TABLE_YEAR: i64 = 2099;

/// `local` (seconds, on day `days`) as a `NaiveDateTime` that `chrono-tz` can look up: years
/// after its table are mapped to an equivalent year in 2072..=2099, years before 1200 (long
/// before any transition) are moved by whole 400-year cycles.
fn lookup_datetime(local: i64, days: i64) -> Option<NaiveDateTime> {
    let (y, _, _) = civil_from_days(days);
    let shift_days = if y > LAST_TABLE_YEAR {
        let jan1 = days_from_civil(y, 1, 1);
        let (leap, dow) = (is_leap(y), day_of_week(jan1));
        let y2 = (2072..=LAST_TABLE_YEAR)
            .find(|&c| is_leap(c) == leap && day_of_week(days_from_civil(c, 1, 1)) == dow)?;
        days_from_civil(y2, 1, 1) - jan1
    } else if y < 1200 {
        (1599 - y).div_euclid(400) * 146_097
    } else {
        0
    };
    let t = local.checked_add(shift_days.checked_mul(86_400)?)?;
    DateTime::from_timestamp(t, 0).map(|d| d.naive_utc())
}

fn fix(o: chrono_tz::TzOffset) -> i32 {
    o.fix().local_minus_utc()
}

/// The offset of a local date-time in a region, like Java's `ZonedDateTime.of`: in a gap the
/// offset before the gap (so the time moves forward by the gap), in an overlap the earlier one.
fn region_offset(tz: Tz, local: i64, days: i64) -> Option<i32> {
    let ndt = lookup_datetime(local, days)?;
    match tz.offset_from_local_datetime(&ndt) {
        LocalResult::Single(o) => Some(fix(o)),
        LocalResult::Ambiguous(earlier, _) => Some(fix(earlier)),
        LocalResult::None => GapInfo::new(&ndt, &tz)?.begin.map(|(_, o)| fix(o)),
    }
}

/// The offset of a local date-time when it is neither in a gap nor in an overlap.
fn single_offset(tz: Tz, local: i64, days: i64) -> Option<i32> {
    let ndt = lookup_datetime(local, days)?;
    match tz.offset_from_local_datetime(&ndt) {
        LocalResult::Single(o) => Some(fix(o)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Zone names

/// Short zone names (`z`) and the zones Java 17 maps them to for `Locale.ENGLISH`; sorted.
#[rustfmt::skip]
const ZONE_SHORT_NAMES: &[(&str, Tz)] = &[
    ("ACDT", Tz::Australia__Adelaide),
    ("ACST", Tz::America__Rio_Branco),
    ("ACT", Tz::America__Rio_Branco),
    ("ACWST", Tz::Australia__Eucla),
    ("ACWT", Tz::Australia__Eucla),
    ("ADT", Tz::America__Halifax),
    ("AEDT", Tz::Australia__Sydney),
    ("AEST", Tz::Australia__Sydney),
    ("AET", Tz::Australia__Sydney),
    ("AFT", Tz::Asia__Kabul),
    ("AKDT", Tz::America__Juneau),
    ("AKST", Tz::America__Juneau),
    ("AKT", Tz::America__Juneau),
    ("ALMT", Tz::Asia__Almaty),
    ("AMT", Tz::America__Manaus),
    ("ANAT", Tz::Asia__Anadyr),
    ("AQTT", Tz::Asia__Aqtobe),
    ("ART", Tz::America__Argentina__Buenos_Aires),
    ("AST", Tz::America__Halifax),
    ("AT", Tz::America__Halifax),
    ("ATT", Tz::Africa__Abidjan),
    ("AWST", Tz::Australia__Perth),
    ("AWT", Tz::Australia__Perth),
    ("AZOST", Tz::Atlantic__Azores),
    ("AZOT", Tz::Atlantic__Azores),
    ("AZT", Tz::Asia__Baku),
    ("BDT", Tz::Asia__Dhaka),
    ("BNT", Tz::Asia__Kuching),
    ("BOT", Tz::America__La_Paz),
    ("BRT", Tz::America__Sao_Paulo),
    ("BST", Tz::Pacific__Bougainville),
    ("BT", Tz::Pacific__Bougainville),
    ("BTT", Tz::Asia__Thimphu),
    ("CAT", Tz::Africa__Maputo),
    ("CCT", Tz::Asia__Yangon),
    ("CDT", Tz::America__Chicago),
    ("CEST", Tz::Europe__Paris),
    ("CET", Tz::Europe__Paris),
    ("CHADT", Tz::Pacific__Chatham),
    ("CHAST", Tz::Pacific__Chatham),
    ("CHAT", Tz::Pacific__Chatham),
    ("CHOT", Tz::Asia__Ulaanbaatar),
    ("CHUT", Tz::Pacific__Port_Moresby),
    ("CIT", Tz::Asia__Bangkok),
    ("CKT", Tz::Pacific__Rarotonga),
    ("CLST", Tz::Antarctica__Palmer),
    ("CLT", Tz::Antarctica__Palmer),
    ("COT", Tz::America__Bogota),
    ("CST", Tz::America__Chicago),
    ("CT", Tz::America__Chicago),
    ("CVT", Tz::Atlantic__Cape_Verde),
    ("CXT", Tz::Asia__Bangkok),
    ("ChST", Tz::Pacific__Guam),
    ("ChT", Tz::Pacific__Guam),
    ("DAVT", Tz::Antarctica__Davis),
    ("DDUT", Tz::Pacific__Port_Moresby),
    ("EASST", Tz::Pacific__Easter),
    ("EAST", Tz::Pacific__Easter),
    ("EAT", Tz::Africa__Nairobi),
    ("ECT", Tz::America__Guayaquil),
    ("EDT", Tz::America__New_York),
    ("EEST", Tz::Europe__Bucharest),
    ("EET", Tz::Europe__Bucharest),
    ("EGST", Tz::America__Scoresbysund),
    ("EGT", Tz::America__Scoresbysund),
    ("EST", Tz::America__New_York),
    ("ET", Tz::America__New_York),
    ("FJT", Tz::Pacific__Fiji),
    ("FKT", Tz::Atlantic__Stanley),
    ("FNT", Tz::America__Noronha),
    ("GALT", Tz::Pacific__Galapagos),
    ("GAMT", Tz::Pacific__Gambier),
    ("GET", Tz::Asia__Tbilisi),
    ("GFT", Tz::America__Cayenne),
    ("GILT", Tz::Pacific__Tarawa),
    ("GST", Tz::Atlantic__South_Georgia),
    ("GT", Tz::Atlantic__South_Georgia),
    ("GYT", Tz::America__Guyana),
    ("HADT", Tz::Pacific__Honolulu),
    ("HAST", Tz::Pacific__Honolulu),
    ("HAT", Tz::Pacific__Honolulu),
    ("HKT", Tz::Asia__Hong_Kong),
    ("HOVT", Tz::Asia__Hovd),
    ("HST", Tz::Pacific__Honolulu),
    ("ICT", Tz::Asia__Bangkok),
    ("IDT", Tz::Asia__Kolkata),
    ("IOT", Tz::Indian__Chagos),
    ("IRKT", Tz::Asia__Irkutsk),
    ("IRST", Tz::Asia__Tehran),
    ("IRT", Tz::Asia__Tehran),
    ("IST", Tz::Africa__Abidjan),
    ("IT", Tz::Africa__Abidjan),
    ("JST", Tz::Asia__Tokyo),
    ("JT", Tz::Asia__Tokyo),
    ("KGT", Tz::Asia__Bishkek),
    ("KOST", Tz::Pacific__Kosrae),
    ("KRAT", Tz::Asia__Krasnoyarsk),
    ("KST", Tz::Asia__Seoul),
    ("KT", Tz::Asia__Seoul),
    ("LHDT", Tz::Australia__Lord_Howe),
    ("LHST", Tz::Australia__Lord_Howe),
    ("LHT", Tz::Australia__Lord_Howe),
    ("LINT", Tz::Pacific__Kiritimati),
    ("MAGT", Tz::Asia__Magadan),
    ("MART", Tz::Pacific__Marquesas),
    ("MAWT", Tz::Antarctica__Mawson),
    ("MDT", Tz::America__Denver),
    ("MEST", Tz::Europe__Paris),
    ("MET", Tz::Europe__Paris),
    ("MHT", Tz::Pacific__Tarawa),
    ("MMT", Tz::Asia__Yangon),
    ("MSK", Tz::Europe__Moscow),
    ("MST", Tz::America__Denver),
    ("MT", Tz::Europe__Moscow),
    ("MUT", Tz::Indian__Mauritius),
    ("MVT", Tz::Indian__Maldives),
    ("MYT", Tz::Asia__Kuching),
    ("NCT", Tz::Pacific__Noumea),
    ("NDT", Tz::America__St_Johns),
    ("NFST", Tz::Pacific__Norfolk),
    ("NFT", Tz::Pacific__Norfolk),
    ("NOVT", Tz::Asia__Novosibirsk),
    ("NPT", Tz::Asia__Kathmandu),
    ("NRT", Tz::Pacific__Nauru),
    ("NST", Tz::America__St_Johns),
    ("NT", Tz::America__St_Johns),
    ("NUT", Tz::Pacific__Niue),
    ("NZDT", Tz::Pacific__Auckland),
    ("NZST", Tz::Pacific__Auckland),
    ("NZT", Tz::Pacific__Auckland),
    ("OMST", Tz::Asia__Omsk),
    ("ORAT", Tz::Asia__Aqtobe),
    ("PDT", Tz::America__Los_Angeles),
    ("PET", Tz::America__Lima),
    ("PETT", Tz::Asia__Kamchatka),
    ("PGT", Tz::Pacific__Port_Moresby),
    ("PHOT", Tz::Pacific__Kanton),
    ("PKT", Tz::Asia__Karachi),
    ("PMDT", Tz::America__Miquelon),
    ("PMST", Tz::America__Miquelon),
    ("PMT", Tz::America__Miquelon),
    ("PONT", Tz::Pacific__Guadalcanal),
    ("PST", Tz::America__Los_Angeles),
    ("PT", Tz::America__Los_Angeles),
    ("PWT", Tz::Pacific__Palau),
    ("PYST", Tz::America__Asuncion),
    ("PYT", Tz::America__Asuncion),
    ("QOST", Tz::Asia__Almaty),
    ("QYZT", Tz::Asia__Aqtobe),
    ("RET", Tz::Asia__Dubai),
    ("ROTT", Tz::Antarctica__Rothera),
    ("SAKT", Tz::Asia__Sakhalin),
    ("SAMT", Tz::Europe__Samara),
    ("SAST", Tz::Africa__Johannesburg),
    ("SAT", Tz::Africa__Johannesburg),
    ("SBT", Tz::Pacific__Guadalcanal),
    ("SCT", Tz::Asia__Dubai),
    ("SGT", Tz::Asia__Singapore),
    ("SRET", Tz::Asia__Srednekolymsk),
    ("SRT", Tz::America__Paramaribo),
    ("SST", Tz::Pacific__Pago_Pago),
    ("ST", Tz::Pacific__Pago_Pago),
    ("SYOT", Tz::Asia__Riyadh),
    ("TAHT", Tz::Pacific__Tahiti),
    ("TFT", Tz::Indian__Maldives),
    ("TJT", Tz::Asia__Dushanbe),
    ("TKT", Tz::Pacific__Fakaofo),
    ("TLT", Tz::Asia__Dili),
    ("TMT", Tz::Asia__Ashgabat),
    ("TOT", Tz::Pacific__Tongatapu),
    ("TRT", Tz::Europe__Istanbul),
    ("TVT", Tz::Pacific__Tarawa),
    ("ULAT", Tz::Asia__Ulaanbaatar),
    ("UYT", Tz::America__Montevideo),
    ("UZT", Tz::Asia__Tashkent),
    ("VET", Tz::America__Caracas),
    ("VLAT", Tz::Asia__Vladivostok),
    ("VOST", Tz::Antarctica__Vostok),
    ("VUT", Tz::Pacific__Efate),
    ("WAKT", Tz::Pacific__Tarawa),
    ("WAT", Tz::Africa__Lagos),
    ("WEST", Tz::Atlantic__Canary),
    ("WET", Tz::Atlantic__Canary),
    ("WFT", Tz::Pacific__Tarawa),
    ("WGST", Tz::America__Nuuk),
    ("WGT", Tz::America__Nuuk),
    ("WIB", Tz::Asia__Jakarta),
    ("WIT", Tz::Asia__Jayapura),
    ("WITA", Tz::Asia__Makassar),
    ("WSST", Tz::Pacific__Apia),
    ("WST", Tz::Pacific__Apia),
    ("XJT", Tz::Asia__Urumqi),
    ("YAKT", Tz::Asia__Yakutsk),
    ("YEKT", Tz::Asia__Yekaterinburg),
];

/// Full zone names (`zzzz`) and the zones Java 17 maps them to for `Locale.ENGLISH`; sorted.
#[rustfmt::skip]
const ZONE_FULL_NAMES: &[(&str, Tz)] = &[
    ("Acre Standard Time", Tz::America__Rio_Branco),
    ("Acre Time", Tz::America__Rio_Branco),
    ("Afghanistan Time", Tz::Asia__Kabul),
    ("Alaska Daylight Time", Tz::America__Juneau),
    ("Alaska Standard Time", Tz::America__Juneau),
    ("Alaska Time", Tz::America__Juneau),
    ("Alma-Ata Time", Tz::Asia__Almaty),
    ("Amazon Standard Time", Tz::America__Manaus),
    ("Amazon Time", Tz::America__Manaus),
    ("Anadyr Standard Time", Tz::Asia__Anadyr),
    ("Anadyr Time", Tz::Asia__Anadyr),
    ("Apia Standard Time", Tz::Pacific__Apia),
    ("Apia Time", Tz::Pacific__Apia),
    ("Aqtau Time", Tz::Asia__Aqtobe),
    ("Aqtobe Time", Tz::Asia__Aqtobe),
    ("Arabian Standard Time", Tz::Asia__Riyadh),
    ("Arabian Time", Tz::Asia__Riyadh),
    ("Argentina Standard Time", Tz::America__Argentina__Buenos_Aires),
    ("Argentina Time", Tz::America__Argentina__Buenos_Aires),
    ("Armenia Standard Time", Tz::Asia__Yerevan),
    ("Armenia Time", Tz::Asia__Yerevan),
    ("Astrakhan Standard Time", Tz::Europe__Astrakhan),
    ("Astrakhan Time", Tz::Europe__Astrakhan),
    ("Atlantic Daylight Time", Tz::America__Halifax),
    ("Atlantic Standard Time", Tz::America__Halifax),
    ("Atlantic Time", Tz::America__Halifax),
    ("Atyrau Time", Tz::Asia__Aqtobe),
    ("Australian Central Daylight Time", Tz::Australia__Adelaide),
    ("Australian Central Standard Time", Tz::Australia__Adelaide),
    ("Australian Central Western Standard Time", Tz::Australia__Eucla),
    ("Australian Central Western Time", Tz::Australia__Eucla),
    ("Australian Eastern Daylight Time", Tz::Australia__Sydney),
    ("Australian Eastern Standard Time", Tz::Australia__Sydney),
    ("Australian Western Standard Time", Tz::Australia__Perth),
    ("Australian Western Time", Tz::Antarctica__Casey),
    ("Azerbaijan Standard Time", Tz::Asia__Baku),
    ("Azerbaijan Time", Tz::Asia__Baku),
    ("Azores Standard Time", Tz::Atlantic__Azores),
    ("Azores Summer Time", Tz::Atlantic__Azores),
    ("Azores Time", Tz::Atlantic__Azores),
    ("Bangladesh Standard Time", Tz::Asia__Dhaka),
    ("Bangladesh Time", Tz::Asia__Dhaka),
    ("Barnaul Standard Time", Tz::Asia__Barnaul),
    ("Barnaul Time", Tz::Asia__Barnaul),
    ("Bhutan Time", Tz::Asia__Thimphu),
    ("Bolivia Time", Tz::America__La_Paz),
    ("Bougainville Standard Time", Tz::Pacific__Bougainville),
    ("Bougainville Time", Tz::Pacific__Bougainville),
    ("Brasilia Standard Time", Tz::America__Sao_Paulo),
    ("Brasilia Time", Tz::America__Sao_Paulo),
    ("British Summer Time", Tz::Africa__Abidjan),
    ("British Time", Tz::Africa__Abidjan),
    ("Brunei Darussalam Time", Tz::Asia__Kuching),
    ("Brunei Time", Tz::Asia__Kuching),
    ("Cape Verde Standard Time", Tz::Atlantic__Cape_Verde),
    ("Cape Verde Time", Tz::Atlantic__Cape_Verde),
    ("Casey Time", Tz::Antarctica__Casey),
    ("Central Africa Time", Tz::Africa__Maputo),
    ("Central African Time", Tz::Africa__Maputo),
    ("Central Australia Time", Tz::Australia__Adelaide),
    ("Central Daylight Time", Tz::America__Chicago),
    ("Central European Standard Time", Tz::Europe__Paris),
    ("Central European Summer Time", Tz::Europe__Paris),
    ("Central European Time", Tz::Europe__Paris),
    ("Central Indonesia Time", Tz::Asia__Makassar),
    ("Central Standard Time", Tz::America__Chicago),
    ("Central Time", Tz::America__Chicago),
    ("Chamorro Standard Time", Tz::Pacific__Guam),
    ("Chamorro Time", Tz::Pacific__Guam),
    ("Chatham Daylight Time", Tz::Pacific__Chatham),
    ("Chatham Standard Time", Tz::Pacific__Chatham),
    ("Chatham Time", Tz::Pacific__Chatham),
    ("Chile Standard Time", Tz::America__Santiago),
    ("Chile Summer Time", Tz::Antarctica__Palmer),
    ("Chile Time", Tz::Antarctica__Palmer),
    ("China Standard Time", Tz::Asia__Shanghai),
    ("China Time", Tz::Asia__Shanghai),
    ("Christmas Island Time", Tz::Asia__Bangkok),
    ("Chuuk Time", Tz::Pacific__Port_Moresby),
    ("Cocos Islands Time", Tz::Asia__Yangon),
    ("Colombia Standard Time", Tz::America__Bogota),
    ("Colombia Time", Tz::America__Bogota),
    ("Cook Islands Standard Time", Tz::Pacific__Rarotonga),
    ("Cook Islands Time", Tz::Pacific__Rarotonga),
    ("Coordinated Universal Time", Tz::Etc__UTC),
    ("Cuba Daylight Time", Tz::America__Havana),
    ("Cuba Standard Time", Tz::America__Havana),
    ("Cuba Time", Tz::America__Havana),
    ("Davis Time", Tz::Antarctica__Davis),
    ("Dumont-d'Urville Time", Tz::Pacific__Port_Moresby),
    ("Dumont-d’Urville Time", Tz::Pacific__Port_Moresby),
    ("East Africa Time", Tz::Africa__Nairobi),
    ("East Greenland Standard Time", Tz::America__Scoresbysund),
    ("East Greenland Summer Time", Tz::America__Scoresbysund),
    ("East Greenland Time", Tz::America__Scoresbysund),
    ("East Indonesia Time", Tz::Asia__Jayapura),
    ("East Kazakhstan Time", Tz::Asia__Almaty),
    ("East Timor Time", Tz::Asia__Dili),
    ("Easter Island Standard Time", Tz::Pacific__Easter),
    ("Easter Island Summer Time", Tz::Pacific__Easter),
    ("Easter Island Time", Tz::Pacific__Easter),
    ("Eastern Africa Time", Tz::Africa__Nairobi),
    ("Eastern Australia Time", Tz::Australia__Sydney),
    ("Eastern Daylight Time", Tz::America__New_York),
    ("Eastern European Standard Time", Tz::Europe__Bucharest),
    ("Eastern European Summer Time", Tz::Europe__Bucharest),
    ("Eastern European Time", Tz::Europe__Bucharest),
    ("Eastern Indonesia Time", Tz::Asia__Jayapura),
    ("Eastern Standard Time", Tz::America__New_York),
    ("Eastern Time", Tz::America__New_York),
    ("Ecuador Time", Tz::America__Guayaquil),
    ("Falkland Islands Standard Time", Tz::Atlantic__Stanley),
    ("Falkland Islands Time", Tz::Atlantic__Stanley),
    ("Fernando de Noronha Standard Time", Tz::America__Noronha),
    ("Fernando de Noronha Time", Tz::America__Noronha),
    ("Fiji Standard Time", Tz::Pacific__Fiji),
    ("Fiji Time", Tz::Pacific__Fiji),
    ("French Guiana Time", Tz::America__Cayenne),
    ("French Southern & Antarctic Lands Time", Tz::Indian__Maldives),
    ("French Southern & Antarctic Time", Tz::Indian__Maldives),
    ("Galapagos Time", Tz::Pacific__Galapagos),
    ("Gambier Time", Tz::Pacific__Gambier),
    ("Georgia Standard Time", Tz::Asia__Tbilisi),
    ("Georgia Time", Tz::Asia__Tbilisi),
    ("Ghana Mean Time", Tz::Africa__Abidjan),
    ("Gilbert Is. Time", Tz::Pacific__Tarawa),
    ("Gilbert Islands Time", Tz::Pacific__Tarawa),
    ("Greenwich Mean Time", Tz::Africa__Abidjan),
    ("Gulf Standard Time", Tz::Asia__Dubai),
    ("Gulf Time", Tz::Asia__Dubai),
    ("Guyana Time", Tz::America__Guyana),
    ("Hawaii-Aleutian Daylight Time", Tz::Pacific__Honolulu),
    ("Hawaii-Aleutian Standard Time", Tz::Pacific__Honolulu),
    ("Hawaii-Aleutian Time", Tz::Pacific__Honolulu),
    ("Hong Kong Standard Time", Tz::Asia__Hong_Kong),
    ("Hong Kong Time", Tz::Asia__Hong_Kong),
    ("Hovd Standard Time", Tz::Asia__Hovd),
    ("Hovd Time", Tz::Asia__Hovd),
    ("India Standard Time", Tz::Asia__Kolkata),
    ("India Time", Tz::Asia__Kolkata),
    ("Indian Ocean Territory Time", Tz::Indian__Chagos),
    ("Indian Ocean Time", Tz::Indian__Chagos),
    ("Indochina Time", Tz::Asia__Bangkok),
    ("Iran Standard Time", Tz::Asia__Tehran),
    ("Iran Time", Tz::Asia__Tehran),
    ("Irish Standard Time", Tz::Africa__Abidjan),
    ("Irish Time", Tz::Africa__Abidjan),
    ("Irkutsk Standard Time", Tz::Asia__Irkutsk),
    ("Irkutsk Time", Tz::Asia__Irkutsk),
    ("Israel Daylight Time", Tz::Asia__Jerusalem),
    ("Israel Standard Time", Tz::Asia__Jerusalem),
    ("Israel Time", Tz::Asia__Jerusalem),
    ("Japan Standard Time", Tz::Asia__Tokyo),
    ("Japan Time", Tz::Asia__Tokyo),
    ("Kanton Standard Time", Tz::Pacific__Kanton),
    ("Kanton Time", Tz::Pacific__Kanton),
    ("Kirgizstan Time", Tz::Asia__Bishkek),
    ("Korean Standard Time", Tz::Asia__Seoul),
    ("Korean Time", Tz::Asia__Seoul),
    ("Kosrae Time", Tz::Pacific__Kosrae),
    ("Kostanay Time", Tz::Asia__Almaty),
    ("Krasnoyarsk Standard Time", Tz::Asia__Krasnoyarsk),
    ("Krasnoyarsk Time", Tz::Asia__Krasnoyarsk),
    ("Kyrgyzstan Time", Tz::Asia__Bishkek),
    ("Line Is. Time", Tz::Pacific__Kiritimati),
    ("Line Islands Time", Tz::Pacific__Kiritimati),
    ("Lord Howe Daylight Time", Tz::Australia__Lord_Howe),
    ("Lord Howe Standard Time", Tz::Australia__Lord_Howe),
    ("Lord Howe Time", Tz::Australia__Lord_Howe),
    ("Magadan Standard Time", Tz::Asia__Magadan),
    ("Magadan Time", Tz::Asia__Magadan),
    ("Malaysia Time", Tz::Asia__Kuching),
    ("Maldives Time", Tz::Indian__Maldives),
    ("Marquesas Time", Tz::Pacific__Marquesas),
    ("Marshall Islands Time", Tz::Pacific__Tarawa),
    ("Mauritius Standard Time", Tz::Indian__Mauritius),
    ("Mauritius Time", Tz::Indian__Mauritius),
    ("Mawson Time", Tz::Antarctica__Mawson),
    ("Mexican Pacific Standard Time", Tz::America__Mazatlan),
    ("Mexican Pacific Time", Tz::America__Mazatlan),
    ("Middle Europe Summer Time", Tz::Europe__Paris),
    ("Middle Europe Time", Tz::Europe__Paris),
    ("Moscow Standard Time", Tz::Europe__Moscow),
    ("Moscow Time", Tz::Europe__Moscow),
    ("Mountain Daylight Time", Tz::America__Denver),
    ("Mountain Standard Time", Tz::America__Denver),
    ("Mountain Time", Tz::America__Denver),
    ("Myanmar Time", Tz::Asia__Yangon),
    ("Nauru Time", Tz::Pacific__Nauru),
    ("Nepal Time", Tz::Asia__Kathmandu),
    ("New Caledonia Standard Time", Tz::Pacific__Noumea),
    ("New Caledonia Time", Tz::Pacific__Noumea),
    ("New Zealand Daylight Time", Tz::Pacific__Auckland),
    ("New Zealand Standard Time", Tz::Pacific__Auckland),
    ("New Zealand Time", Tz::Pacific__Auckland),
    ("Newfoundland Daylight Time", Tz::America__St_Johns),
    ("Newfoundland Standard Time", Tz::America__St_Johns),
    ("Newfoundland Time", Tz::America__St_Johns),
    ("Niue Time", Tz::Pacific__Niue),
    ("Norfolk Island Daylight Time", Tz::Pacific__Norfolk),
    ("Norfolk Island Standard Time", Tz::Pacific__Norfolk),
    ("Norfolk Island Time", Tz::Pacific__Norfolk),
    ("Northwest Mexico Daylight Time", Tz::America__Tijuana),
    ("Northwest Mexico Standard Time", Tz::America__Tijuana),
    ("Northwest Mexico Time", Tz::America__Tijuana),
    ("Novosibirsk Standard Time", Tz::Asia__Novosibirsk),
    ("Novosibirsk Time", Tz::Asia__Novosibirsk),
    ("Omsk Standard Time", Tz::Asia__Omsk),
    ("Omsk Time", Tz::Asia__Omsk),
    ("Oral Time", Tz::Asia__Aqtobe),
    ("Pacific Daylight Time", Tz::America__Los_Angeles),
    ("Pacific Standard Time", Tz::America__Los_Angeles),
    ("Pacific Time", Tz::America__Los_Angeles),
    ("Pakistan Standard Time", Tz::Asia__Karachi),
    ("Pakistan Time", Tz::Asia__Karachi),
    ("Palau Time", Tz::Pacific__Palau),
    ("Papua New Guinea Time", Tz::Pacific__Port_Moresby),
    ("Paraguay Standard Time", Tz::America__Asuncion),
    ("Paraguay Summer Time", Tz::America__Asuncion),
    ("Paraguay Time", Tz::America__Asuncion),
    ("Peru Standard Time", Tz::America__Lima),
    ("Peru Time", Tz::America__Lima),
    ("Petropavlovsk-Kamchatski Standard Time", Tz::Asia__Kamchatka),
    ("Petropavlovsk-Kamchatski Time", Tz::Asia__Kamchatka),
    ("Philippine Standard Time", Tz::Asia__Manila),
    ("Philippine Time", Tz::Asia__Manila),
    ("Phoenix Is. Time", Tz::Pacific__Kanton),
    ("Phoenix Islands Time", Tz::Pacific__Kanton),
    ("Pitcairn Time", Tz::Pacific__Pitcairn),
    ("Ponape Time", Tz::Pacific__Guadalcanal),
    ("Punta Arenas Standard Time", Tz::America__Punta_Arenas),
    ("Punta Arenas Time", Tz::America__Punta_Arenas),
    ("Qyzylorda Time", Tz::Asia__Aqtobe),
    ("Reunion Time", Tz::Asia__Dubai),
    ("Rothera Time", Tz::Antarctica__Rothera),
    ("Réunion Time", Tz::Asia__Dubai),
    ("Sakhalin Standard Time", Tz::Asia__Sakhalin),
    ("Sakhalin Time", Tz::Asia__Sakhalin),
    ("Samara Standard Time", Tz::Europe__Samara),
    ("Samara Time", Tz::Europe__Samara),
    ("Samoa Standard Time", Tz::Pacific__Pago_Pago),
    ("Samoa Time", Tz::Pacific__Pago_Pago),
    ("Saratov Standard Time", Tz::Europe__Saratov),
    ("Saratov Time", Tz::Europe__Saratov),
    ("Seychelles Time", Tz::Asia__Dubai),
    ("Singapore Standard Time", Tz::Asia__Singapore),
    ("Singapore Time", Tz::Asia__Singapore),
    ("Solomon Is. Time", Tz::Pacific__Guadalcanal),
    ("Solomon Islands Time", Tz::Pacific__Guadalcanal),
    ("South Africa Standard Time", Tz::Africa__Johannesburg),
    ("South Africa Time", Tz::Africa__Johannesburg),
    ("South Georgia Time", Tz::Atlantic__South_Georgia),
    ("Srednekolymsk Time", Tz::Asia__Srednekolymsk),
    ("St. Pierre & Miquelon Daylight Time", Tz::America__Miquelon),
    ("St. Pierre & Miquelon Standard Time", Tz::America__Miquelon),
    ("St. Pierre & Miquelon Time", Tz::America__Miquelon),
    ("Suriname Time", Tz::America__Paramaribo),
    ("Syowa Time", Tz::Asia__Riyadh),
    ("Tahiti Time", Tz::Pacific__Tahiti),
    ("Taipei Standard Time", Tz::Asia__Taipei),
    ("Taipei Time", Tz::Asia__Taipei),
    ("Tajikistan Time", Tz::Asia__Dushanbe),
    ("Timor-Leste Time", Tz::Asia__Dili),
    ("Tokelau Time", Tz::Pacific__Fakaofo),
    ("Tomsk Standard Time", Tz::Asia__Tomsk),
    ("Tomsk Time", Tz::Asia__Tomsk),
    ("Tonga Standard Time", Tz::Pacific__Tongatapu),
    ("Tonga Time", Tz::Pacific__Tongatapu),
    ("Troll Time", Tz::Africa__Abidjan),
    ("Turkey Time", Tz::Europe__Istanbul),
    ("Turkmenistan Standard Time", Tz::Asia__Ashgabat),
    ("Turkmenistan Time", Tz::Asia__Ashgabat),
    ("Tuvalu Time", Tz::Pacific__Tarawa),
    ("Ulaanbaatar Standard Time", Tz::Asia__Ulaanbaatar),
    ("Ulaanbaatar Time", Tz::Asia__Ulaanbaatar),
    ("Ulyanovsk Standard Time", Tz::Europe__Ulyanovsk),
    ("Ulyanovsk Time", Tz::Europe__Ulyanovsk),
    ("Uruguay Standard Time", Tz::America__Montevideo),
    ("Uruguay Time", Tz::America__Montevideo),
    ("Uzbekistan Standard Time", Tz::Asia__Tashkent),
    ("Uzbekistan Time", Tz::Asia__Tashkent),
    ("Vanuatu Standard Time", Tz::Pacific__Efate),
    ("Vanuatu Time", Tz::Pacific__Efate),
    ("Venezuela Time", Tz::America__Caracas),
    ("Vladivostok Standard Time", Tz::Asia__Vladivostok),
    ("Vladivostok Time", Tz::Asia__Vladivostok),
    ("Volgograd Standard Time", Tz::Europe__Volgograd),
    ("Volgograd Time", Tz::Europe__Volgograd),
    ("Vostok Time", Tz::Antarctica__Vostok),
    ("Wake Island Time", Tz::Pacific__Tarawa),
    ("Wake Time", Tz::Pacific__Tarawa),
    ("Wallis & Futuna Time", Tz::Pacific__Tarawa),
    ("West Africa Standard Time", Tz::Africa__Lagos),
    ("West Africa Time", Tz::Africa__Lagos),
    ("West Greenland Standard Time", Tz::America__Nuuk),
    ("West Greenland Summer Time", Tz::America__Nuuk),
    ("West Greenland Time", Tz::America__Nuuk),
    ("West Indonesia Time", Tz::Asia__Jakarta),
    ("West Kazakhstan Time", Tz::Asia__Aqtobe),
    ("Western African Time", Tz::Africa__Maputo),
    ("Western Australia Time", Tz::Australia__Perth),
    ("Western European Standard Time", Tz::Atlantic__Canary),
    ("Western European Summer Time", Tz::Atlantic__Canary),
    ("Western European Time", Tz::Atlantic__Canary),
    ("Western Indonesia Time", Tz::Asia__Jakarta),
    ("Xinjiang Standard Time", Tz::Asia__Urumqi),
    ("Xinjiang Time", Tz::Asia__Urumqi),
    ("Yakutsk Standard Time", Tz::Asia__Yakutsk),
    ("Yakutsk Time", Tz::Asia__Yakutsk),
    ("Yekaterinburg Standard Time", Tz::Asia__Yekaterinburg),
    ("Yekaterinburg Time", Tz::Asia__Yekaterinburg),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fmt(pattern: &str, zone: Option<&str>) -> TimestampFormat {
        TimestampFormat::new(pattern, zone).expect("valid format")
    }

    fn config_error(pattern: &str, zone: Option<&str>) -> String {
        let e = TimestampFormat::new(pattern, zone).expect_err("invalid format");
        e.to_string()
    }

    /// (pattern, value, default zone, epoch millis or None for a rejected value). Produced by
    /// Java 17's DateTimeFormatter (OpenJDK 17.0.15, tzdata 2025a):
    /// `DateTimeFormatter.ofPattern(pattern, Locale.ENGLISH).parse(value)`, then
    /// `Instant.from` when the value has an offset or zone, else
    /// `ZonedDateTime.of(LocalDateTime.of(date, time or midnight), zone)` with the value's zone
    /// or the default zone (UTC when empty). `epoch_millis` is `Long.parseLong`, `epoch_seconds`
    /// `new BigDecimal(v)` floored to millis, `iso8601` Java's `ISO_DATE_TIME` (or `ISO_DATE` for
    /// a date alone) with a space read as `T`.
    #[rustfmt::skip]
    const JAVA_CASES: &[(&str, &str, &str, Option<i64>)] = &[
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:34:56", "", Some(1709296496000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:34:56", "Europe/Amsterdam", Some(1709292896000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:34:56", "America/New_York", Some(1709314496000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-07-01 12:34:56", "Europe/Amsterdam", Some(1719830096000)),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789+01:00", "Europe/Amsterdam", Some(1709292896789)),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789Z", "Europe/Amsterdam", Some(1709296496789)),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789-05:30", "Europe/Amsterdam", Some(1709316296789)),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.78+01:00", "Europe/Amsterdam", None),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789+01", "Europe/Amsterdam", None),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789+0100", "Europe/Amsterdam", None),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "01/03/2024T12:34:56.789", "Europe/Amsterdam", None),
        ("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", "1/03/2024T12:34:56.789Z", "Europe/Amsterdam", None),
        ("y-M-d", "2024-3-1", "", Some(1709251200000)),
        ("y-M-d", "24-3-1", "", Some(-61404652800000)),
        ("y-M-d", "-5-3-1", "", None),
        ("yy-MM-dd", "24-03-01", "", Some(1709251200000)),
        ("yy-MM-dd", "99-03-01", "", Some(4076006400000)),
        ("yy-MM-dd", "00-03-01", "", Some(951868800000)),
        ("yy-MM-dd", "2024-03-01", "", None),
        ("yy-MM-dd", "4-03-01", "", None),
        ("yyy-MM-dd", "2024-03-01", "", Some(1709251200000)),
        ("yyy-MM-dd", "024-03-01", "", Some(-61404652800000)),
        ("yyy-MM-dd", "24-03-01", "", None),
        ("yyyyy-MM-dd", "02024-03-01", "", Some(1709251200000)),
        ("yyyyy-MM-dd", "2024-03-01", "", None),
        ("yyyy-MM-dd", "12024-03-01", "", None),
        ("yyyy-MM-dd", "+12024-03-01", "", Some(317278771200000)),
        ("yyyy-MM-dd", "+2024-03-01", "", None),
        ("yyyy-MM-dd", "-2024-03-01", "", None),
        ("yyyy-MM-dd", "0000-01-01", "", None),
        ("yyyy-MM-dd", "0001-01-01", "", Some(-62135596800000)),
        ("uuuu-MM-dd", "-2024-03-01", "", Some(-126033321600000)),
        ("uuuu-MM-dd", "0000-01-01", "", Some(-62167219200000)),
        ("uuuu-MM-dd", "-0000-01-01", "", None),
        ("uuuu-MM-dd", "+12024-03-01", "", Some(317278771200000)),
        ("uu-MM-dd", "24-03-01", "", Some(1709251200000)),
        ("u-MM-dd", "24-03-01", "", Some(-61404652800000)),
        ("uuuu-MM-dd", "+100000-01-01", "", Some(3093527980800000)),
        ("uuuu-MM-dd", "+292278994-08-17", "", Some(9223372036828800000)),
        ("uuuu-MM-dd", "+292278995-01-01", "", None),
        ("uuuu-MM-dd", "-292275055-05-17", "", Some(-9223372036828800000)),
        ("uuuu-MM-dd", "-292275056-01-01", "", None),
        ("yyyy-MM-dd", "+999999999-01-01", "", None),
        ("uuuu-MM-dd", "+1000000000-01-01", "", None),
        ("G yyyy-MM-dd", "BC 0044-03-15", "", Some(-63517824000000)),
        ("G yyyy-MM-dd", "AD 2024-03-01", "", Some(1709251200000)),
        ("GGGG yyyy-MM-dd", "Anno Domini 2024-03-01", "", Some(1709251200000)),
        ("GGGG yyyy-MM-dd", "Before Christ 0001-01-01", "", Some(-62167219200000)),
        ("yyyy-MM-dd G", "2024-03-01 AD", "", Some(1709251200000)),
        ("uuuu-MM-dd G", "2024-03-01 BC", "", None),
        ("uuuu-MM-dd G", "2024-03-01 AD", "", Some(1709251200000)),
        ("uuuu-MM-dd G", "-0005-03-01 BC", "", Some(-62319888000000)),
        ("G yyyy-MM-dd", "ad 2024-03-01", "", None),
        ("yyyy-MM-dd uuuu", "2024-03-01 2024", "", Some(1709251200000)),
        ("yyyy-MM-dd uuuu", "2024-03-01 2023", "", None),
        ("yyyy-MM-dd yyyy", "2024-03-01 2024", "", Some(1709251200000)),
        ("yyyy-MM-dd yyyy", "2024-03-01 2025", "", None),
        ("yyyyMMdd", "20240301", "", Some(1709251200000)),
        ("yyyyMMdd", "+120240301", "", Some(317278771200000)),
        ("yyyyMMdd", "120240301", "", None),
        ("yyyyMMdd", "2024031", "", None),
        ("yMMdd", "20240301", "", Some(1709251200000)),
        ("yMMdd", "120301", "", Some(-61783344000000)),
        ("yyMMdd", "240301", "", Some(1709251200000)),
        ("uuuuMMdd", "-20240301", "", Some(-126033321600000)),
        ("yyyyMMddHHmmss", "20240301123456", "", Some(1709296496000)),
        ("yyyyMMddHHmmssSSS", "20240301123456789", "", Some(1709296496789)),
        ("yyyyMMddHHmmssSSS", "2024030112345678", "", None),
        ("yyyyMMdd'T'HHmmss.SSSZ", "20240301T123456.789+0100", "", Some(1709292896789)),
        ("yyyyDDD", "2024061", "", Some(1709251200000)),
        ("yyyyMMd", "2024031", "", None),
        ("dMMyyyy", "1032024", "", None),
        ("ddMMyyyy", "01032024", "", Some(1709251200000)),
        ("yyyyMMdd HHmm", "20240301 1230", "", Some(1709296200000)),
        ("yyyyMMdd Hmm", "20240301 930", "", Some(1709285400000)),
        ("yyyyMMdd Hmm", "20240301 1230", "", Some(1709296200000)),
        ("yyyyMMdd Hmm", "20240301 30", "", None),
        ("yyyyMMdd", "2024030", "", None),
        ("yyyyMMdd", "202403011", "", None),
        ("yyyyMMdd", "-20240301", "", None),
        ("yyyy-M-d", "2024-3-1", "", Some(1709251200000)),
        ("yyyy-M-d", "2024-03-01", "", Some(1709251200000)),
        ("yyyy-M-d", "2024-003-01", "", Some(1709251200000)),
        ("yyyy-MMM-dd", "2024-Mar-01", "", Some(1709251200000)),
        ("yyyy-MMM-dd", "2024-MAR-01", "", None),
        ("yyyy-MMM-dd", "2024-mar-01", "", None),
        ("yyyy-MMM-dd", "2024-Sep-01", "", Some(1725148800000)),
        ("yyyy-MMM-dd", "2024-Sept-01", "", None),
        ("dd MMMM yyyy", "01 March 2024", "", Some(1709251200000)),
        ("dd MMMM yyyy", "01 Mar 2024", "", None),
        ("dd MMMM yyyy", "31 December 1999", "", Some(946598400000)),
        ("dd MMMM yyyy", "29 February 2023", "", Some(1677542400000)),
        ("yyyy-LL-dd", "2024-03-01", "", Some(1709251200000)),
        ("yyyy-L-dd", "2024-3-01", "", Some(1709251200000)),
        ("yyyy-LLL-dd", "2024-Sep-01", "", Some(1725148800000)),
        ("dd LLLL yyyy", "01 September 2024", "", Some(1725148800000)),
        ("yyyy-MM-dd MMM", "2024-03-01 Mar", "", Some(1709251200000)),
        ("yyyy-MM-dd MMM", "2024-03-01 Apr", "", None),
        ("yyyy-MM-dd", "2024-13-01", "", None),
        ("yyyy-MM-dd", "2024-00-10", "", None),
        ("yyyy-MM-dd", "2024-01-00", "", None),
        ("yyyy-MM-dd", "2024-3-01", "", None),
        ("yyyy-MM-dd", "2024-02-29", "", Some(1709164800000)),
        ("yyyy-MM-dd", "2023-02-29", "", Some(1677542400000)),
        ("yyyy-MM-dd", "2024-02-30", "", Some(1709164800000)),
        ("yyyy-MM-dd", "2024-02-31", "", Some(1709164800000)),
        ("yyyy-MM-dd", "2023-02-31", "", Some(1677542400000)),
        ("yyyy-MM-dd", "2024-04-31", "", Some(1714435200000)),
        ("yyyy-MM-dd", "2024-04-32", "", None),
        ("yyyy-MM-dd", "2024-06-31", "", Some(1719705600000)),
        ("yyyy-MM-dd", "2024-01-31", "", Some(1706659200000)),
        ("yyyy-MM-dd", "2024-01-32", "", None),
        ("yyyy-MM-dd", "2000-02-29", "", Some(951782400000)),
        ("yyyy-MM-dd", "1900-02-29", "", Some(-2203977600000)),
        ("yyyy-MM-d", "2024-03-1", "", Some(1709251200000)),
        ("yyyy-MM-d", "2024-03-01", "", Some(1709251200000)),
        ("yyyy-MM-d", "2024-03-001", "", Some(1709251200000)),
        ("yyyy-MM-d", "2024-03-0000000000000000001", "", Some(1709251200000)),
        ("yyyy-MM-d", "2024-03-00000000000000000001", "", None),
        ("yyyy-MM-d", "2024-03-9999999999999999999", "", None),
        ("yyyy-MM-d", "2024-03--1", "", None),
        ("yyyy-DDD", "2024-061", "", Some(1709251200000)),
        ("yyyy-DDD", "2024-366", "", Some(1735603200000)),
        ("yyyy-DDD", "2023-366", "", None),
        ("yyyy-DDD", "2023-365", "", Some(1703980800000)),
        ("yyyy-DDD", "2024-000", "", None),
        ("yyyy-DDD", "2024-367", "", None),
        ("yyyy-D", "2024-61", "", Some(1709251200000)),
        ("yyyy-D", "2024-1", "", Some(1704067200000)),
        ("yyyy-DD", "2024-61", "", Some(1709251200000)),
        ("yyyy-DD", "2024-061", "", Some(1709251200000)),
        ("yyyy-DD", "2024-1", "", None),
        ("yyyy-MM-dd DDD", "2024-03-01 061", "", Some(1709251200000)),
        ("yyyy-MM-dd DDD", "2024-03-01 062", "", None),
        ("yyyy-MM DDD", "2024-03 061", "", Some(1709251200000)),
        ("yyyy-MM DDD", "2024-04 061", "", None),
        ("yyyy-dd DDD", "2024-01 061", "", Some(1709251200000)),
        ("yyyy-dd DDD", "2024-02 061", "", None),
        ("yyyy-DDD HH:mm", "2024-061 12:00", "", Some(1709294400000)),
        ("yyyy-MM-dd H:mm", "2024-03-01 9:05", "", Some(1709283900000)),
        ("yyyy-MM-dd H:mm", "2024-03-01 09:05", "", Some(1709283900000)),
        ("yyyy-MM-dd H:mm", "2024-03-01 -1:00", "", None),
        ("yyyy-MM-dd HH:mm", "2024-03-01 24:00", "", Some(1709337600000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 24:01", "", None),
        ("yyyy-MM-dd HH:mm", "2024-03-01 25:00", "", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 24:00:00", "", Some(1709337600000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 24:00:01", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 24:00:00.000", "", Some(1709337600000)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 24:00:00.001", "", None),
        ("yyyy-MM-dd HH", "2024-03-01 24", "", Some(1709337600000)),
        ("yyyy-MM-dd HH", "2024-12-31 24", "", Some(1735689600000)),
        ("yyyy-MM-dd HH", "2024-03-01 13", "", Some(1709298000000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 12:60", "", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:60", "", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 1:00:00", "", None),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 12:30 AM", "", Some(1709253000000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 12:30 PM", "", Some(1709296200000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 01:30 PM", "", Some(1709299800000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 11:59 PM", "", Some(1709337540000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 13:30 PM", "", None),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 00:30 AM", "", Some(1709253000000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 00:30 PM", "", Some(1709296200000)),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 12:30 am", "", None),
        ("yyyy-MM-dd hh:mm a", "2024-03-01 12:30 P.M.", "", None),
        ("yyyy-MM-dd h:mm a", "2024-03-01 1:30 PM", "", Some(1709299800000)),
        ("yyyy-MM-dd h:mm a", "2024-03-01 10:30 AM", "", Some(1709289000000)),
        ("yyyy-MM-dd KK:mm a", "2024-03-01 11:30 PM", "", Some(1709335800000)),
        ("yyyy-MM-dd KK:mm a", "2024-03-01 12:30 PM", "", None),
        ("yyyy-MM-dd KK:mm a", "2024-03-01 00:30 PM", "", Some(1709296200000)),
        ("yyyy-MM-dd K:mm a", "2024-03-01 0:30 AM", "", Some(1709253000000)),
        ("yyyy-MM-dd kk:mm", "2024-03-01 24:00", "", Some(1709251200000)),
        ("yyyy-MM-dd kk:mm", "2024-03-01 24:30", "", Some(1709253000000)),
        ("yyyy-MM-dd kk:mm", "2024-03-01 01:00", "", Some(1709254800000)),
        ("yyyy-MM-dd kk:mm", "2024-03-01 00:00", "", Some(1709251200000)),
        ("yyyy-MM-dd kk:mm", "2024-03-01 25:00", "", None),
        ("yyyy-MM-dd k:mm", "2024-03-01 7:00", "", Some(1709276400000)),
        ("yyyy-MM-dd HH:mm a", "2024-03-01 13:00 PM", "", Some(1709298000000)),
        ("yyyy-MM-dd HH:mm a", "2024-03-01 13:00 AM", "", None),
        ("yyyy-MM-dd HH:mm a", "2024-03-01 00:00 AM", "", Some(1709251200000)),
        ("yyyy-MM-dd HH:mm a", "2024-03-01 24:00 AM", "", Some(1709337600000)),
        ("yyyy-MM-dd HH:mm a", "2024-03-01 24:00 PM", "", None),
        ("yyyy-MM-dd HH kk", "2024-03-01 13 13", "", Some(1709298000000)),
        ("yyyy-MM-dd HH kk", "2024-03-01 13 14", "", None),
        ("yyyy-MM-dd HH kk", "2024-03-01 00 24", "", Some(1709251200000)),
        ("yyyy-MM-dd HH hh", "2024-03-01 13 01", "", Some(1709298000000)),
        ("yyyy-MM-dd HH hh", "2024-03-01 13 02", "", None),
        ("yyyy-MM-dd HH KK", "2024-03-01 12 12", "", None),
        ("yyyy-MM-dd HH KK", "2024-03-01 12 00", "", Some(1709294400000)),
        ("yyyy-MM-dd HH hh a", "2024-03-01 13 01 PM", "", Some(1709298000000)),
        ("yyyy-MM-dd HH hh a", "2024-03-01 13 01 AM", "", None),
        ("yyyy-MM-dd H:m:s", "2024-03-01 9:5:7", "", Some(1709283907000)),
        ("yyyy-MM-dd H:m:s", "2024-03-01 09:05:07", "", Some(1709283907000)),
        ("yyyy-MM-dd HH", "2024-03-01 09", "", Some(1709283600000)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:00:00.123", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:00:00.12", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:00:00.1234", "", None),
        ("yyyy-MM-dd HH:mm:ss.S", "2024-03-01 12:00:00.1", "", Some(1709294400100)),
        ("yyyy-MM-dd HH:mm:ss.SS", "2024-03-01 12:00:00.1", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSSSSS", "2024-03-01 12:00:00.123456", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm:ss.SSSSSSSSS", "2024-03-01 12:00:00.123456789", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm:ss.SSSSSSSSS", "1969-12-31 23:59:59.999999999", "", Some(-1)),
        ("yyyy-MM-dd HH:mm:ss.SSSX", "2024-03-01 00:00:00.12Z", "", None),
        ("yyyy-MM-dd HH:mm:ss n", "2024-03-01 12:00:00 123456789", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm:ss n", "2024-03-01 12:00:00 1", "", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm:ss n", "2024-03-01 12:00:00 1000000000", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSS n", "2024-03-01 12:00:00.123 123000000", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm:ss.SSS n", "2024-03-01 12:00:00.123 123000001", "", None),
        ("yyyy-MM-dd HH:mm:ss.nnnnnnnnn", "2024-03-01 12:00:00.000000005", "", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "1969-12-31 23:59:59.999", "", Some(-1)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "1960-06-15 08:00:00.5", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSS", "1960-06-15 08:00:00.500", "", Some(-301247999500)),
        ("EEE, dd MMM yyyy HH:mm:ss", "Fri, 01 Mar 2024 12:00:00", "", Some(1709294400000)),
        ("EEE, dd MMM yyyy HH:mm:ss", "Thu, 01 Mar 2024 12:00:00", "", None),
        ("EEEE dd-MM-yyyy", "Friday 01-03-2024", "", Some(1709251200000)),
        ("EEEE dd-MM-yyyy", "Fri 01-03-2024", "", None),
        ("EEEE dd-MM-yyyy", "Monday 01-03-2024", "", None),
        ("E dd-MM-yyyy", "Fri 01-03-2024", "", Some(1709251200000)),
        ("EE dd-MM-yyyy", "Fri 01-03-2024", "", Some(1709251200000)),
        ("E dd-MM-yyyy", "fri 01-03-2024", "", None),
        ("EEE, dd MMM yyyy HH:mm:ss zzz", "Fri, 01 Mar 2024 12:00:00 GMT", "", Some(1709294400000)),
        ("EEE MMM dd HH:mm:ss zzz yyyy", "Fri Mar 01 12:00:00 CET 2024", "", Some(1709290800000)),
        ("EEE MMM dd HH:mm:ss zzz yyyy", "Mon Jul 01 12:00:00 CEST 2024", "", Some(1719828000000)),
        ("EEE, d MMM yyyy HH:mm:ss Z", "Fri, 1 Mar 2024 12:00:00 +0100", "", Some(1709290800000)),
        ("EEE yyyy-DDD", "Fri 2024-061", "", Some(1709251200000)),
        ("EEE yyyy-DDD", "Sat 2024-061", "", None),
        ("yyyy-MM-dd HH:mm EEE", "2024-03-01 24:00 Fri", "", Some(1709337600000)),
        ("yyyy-MM-dd HH:mm EEE", "2024-03-01 24:00 Sat", "", None),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +01", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +0130", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +01:30", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 -05", "Europe/Amsterdam", Some(1709312400000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +00", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 -0000", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 z", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +1", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XX", "2024-03-01 12:00 +0130", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm XX", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm XX", "2024-03-01 12:00 +01", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XX", "2024-03-01 12:00 -0530", "Europe/Amsterdam", Some(1709314200000)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +01:30", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +0130", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 -05:30", "Europe/Amsterdam", Some(1709314200000)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +18:00", "Europe/Amsterdam", Some(1709229600000)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +19:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +23:59", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +24:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +01:60", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 +00:00", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm XXXX", "2024-03-01 12:00 +0130", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm XXXX", "2024-03-01 12:00 +013045", "Europe/Amsterdam", Some(1709288955000)),
        ("yyyy-MM-dd HH:mm XXXX", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm XXXX", "2024-03-01 12:00 +01:30", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm XXXXX", "2024-03-01 12:00 +01:30:45", "Europe/Amsterdam", Some(1709288955000)),
        ("yyyy-MM-dd HH:mm XXXXX", "2024-03-01 12:00 +01:30", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm XXXXX", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm XXXXX", "2024-03-01 12:00 +013045", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 +00", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 +01", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 +0130", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 Z", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 +0030", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm x", "2024-03-01 12:00 -0030", "Europe/Amsterdam", Some(1709296200000)),
        ("yyyy-MM-dd HH:mm xx", "2024-03-01 12:00 +0000", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm xx", "2024-03-01 12:00 +0130", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm xx", "2024-03-01 12:00 Z", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm xxx", "2024-03-01 12:00 +01:30", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm xxx", "2024-03-01 12:00 +00:00", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm xxx", "2024-03-01 12:00 Z", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm xxxxx", "2024-03-01 12:00 +01:30:45", "Europe/Amsterdam", Some(1709288955000)),
        ("yyyy-MM-dd HH:mm xxxxx", "2024-03-01 12:00 +00:00", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 +0100", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 -0530", "Europe/Amsterdam", Some(1709314200000)),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 +0000", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 Z", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 +01:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm Z", "2024-03-01 12:00 +01", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm ZZZ", "2024-03-01 12:00 +0100", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm ZZZ", "2024-03-01 12:00 -0000", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT+01:00", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT-05:30", "Europe/Amsterdam", Some(1709314200000)),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT+01:00:30", "Europe/Amsterdam", Some(1709290770000)),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT+1", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT+01", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 UTC", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm ZZZZZ", "2024-03-01 12:00 +01:00", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm ZZZZZ", "2024-03-01 12:00 Z", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm ZZZZZ", "2024-03-01 12:00 +01:00:30", "Europe/Amsterdam", Some(1709290770000)),
        ("yyyy-MM-dd HH:mm ZZZZZ", "2024-03-01 12:00 +0100", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+1", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+01", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+1:30", "Europe/Amsterdam", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT-5", "Europe/Amsterdam", Some(1709312400000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+01:30:15", "Europe/Amsterdam", Some(1709288985000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+99", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+1:99", "Europe/Amsterdam", Some(1709284860000)),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT+01:00", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT", "Europe/Amsterdam", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT+1", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT-05:30", "Europe/Amsterdam", Some(1709314200000)),
        ("yyyy-MM-dd HH:mmXXX", "2024-03-01 12:00 +01:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd'T'HH:mm:ssXXX", "2024-03-01T12:00:00+01:00", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 UTC", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 UTC", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 GMT", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 GMT", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 UT", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 UT", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 Z", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 Z", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 CET", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 CET", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 CEST", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 CEST", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 PST", "America/New_York", Some(1705348800000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 PST", "America/New_York", Some(1721070000000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 PDT", "America/New_York", Some(1705348800000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 PDT", "America/New_York", Some(1721070000000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 EST", "America/New_York", Some(1705338000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 EST", "America/New_York", Some(1721059200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 JST", "America/New_York", Some(1705287600000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 JST", "America/New_York", Some(1721012400000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 IST", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 IST", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 BST", "America/New_York", Some(1705280400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 BST", "America/New_York", Some(1721005200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 MET", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 MET", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 Europe/Amsterdam", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 Europe/Amsterdam", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 America/New_York", "America/New_York", Some(1705338000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 America/New_York", "America/New_York", Some(1721059200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 UTC+01:00", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 UTC+01:00", "America/New_York", Some(1721041200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 UTC+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 UTC+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 GMT+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 GMT+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 GMT+01:00", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 GMT+01:00", "America/New_York", Some(1721041200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 GMT0", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 GMT0", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 XYZ", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 XYZ", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 cet", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 cet", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 Central European Standard Time", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 Central European Standard Time", "America/New_York", None),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 EST5EDT", "America/New_York", Some(1705338000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 EST5EDT", "America/New_York", Some(1721059200000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 ChST", "America/New_York", Some(1705284000000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 ChST", "America/New_York", Some(1721008800000)),
        ("yyyy-MM-dd HH:mm z", "2024-01-15 12:00 CHAST", "America/New_York", Some(1705270500000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-15 12:00 CHAST", "America/New_York", Some(1720998900000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Central European Standard Time", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Central European Standard Time", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Central European Summer Time", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Central European Summer Time", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Pacific Daylight Time", "America/New_York", Some(1705348800000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Pacific Daylight Time", "America/New_York", Some(1721070000000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Coordinated Universal Time", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Coordinated Universal Time", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Greenwich Mean Time", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Greenwich Mean Time", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 CEST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 CEST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 CET", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 CET", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 UTC", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 UTC", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-01-15 12:00 Europe/Amsterdam", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm zzzz", "2024-07-15 12:00 Europe/Amsterdam", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Europe/Amsterdam", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Europe/Amsterdam", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 America/New_York", "America/New_York", Some(1705338000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 America/New_York", "America/New_York", Some(1721059200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Z", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Z", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 +01:00", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 +01:00", "America/New_York", Some(1721041200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 +01", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 +01", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC+05:30", "America/New_York", Some(1705300200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC+05:30", "America/New_York", Some(1721025000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC-05:30", "America/New_York", Some(1705339800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC-05:30", "America/New_York", Some(1721064600000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 GMT", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 GMT", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 GMT+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 GMT+1", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 GMT+01:00", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 GMT+01:00", "America/New_York", Some(1721041200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 GMT0", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 GMT0", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UT", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UT", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UT+01:00", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UT+01:00", "America/New_York", Some(1721041200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Etc/GMT+5", "America/New_York", Some(1705338000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Etc/GMT+5", "America/New_York", Some(1721062800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Europe/Amsterdm", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Europe/Amsterdm", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 CEST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 CEST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 CET", "America/New_York", Some(1705316400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 CET", "America/New_York", Some(1721037600000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 EST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 EST", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Zulu", "America/New_York", Some(1705320000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Zulu", "America/New_York", Some(1721044800000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC+01:00:30", "America/New_York", Some(1705316370000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC+01:00:30", "America/New_York", Some(1721041170000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC+25:00", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC+25:00", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 UTC+19:00", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 UTC+19:00", "America/New_York", None),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Asia/Kolkata", "America/New_York", Some(1705300200000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Asia/Kolkata", "America/New_York", Some(1721025000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-01-15 12:00 Australia/Lord_Howe", "America/New_York", Some(1705280400000)),
        ("yyyy-MM-dd HH:mm VV", "2024-07-15 12:00 Australia/Lord_Howe", "America/New_York", Some(1721007000000)),
        ("yyyy-MM-dd HH:mm XXX VV", "2024-03-01 12:00 +05:00 Europe/Amsterdam", "America/New_York", Some(1709276400000)),
        ("yyyy-MM-dd HH:mm VV XXX", "2024-03-01 12:00 Europe/Amsterdam +05:00", "America/New_York", Some(1709276400000)),
        ("yyyy-MM-dd HH:mm XXX '['VV']'", "2024-07-01 12:00 +05:00 [Europe/Amsterdam]", "America/New_York", Some(1719817200000)),
        ("yyyy-MM-dd HH:mm XXX z", "2024-07-01 12:00 +05:00 PST", "America/New_York", Some(1719817200000)),
        ("yyyy-MM-dd HH:mmVV", "2024-07-01 12:00Europe/Amsterdam", "America/New_York", Some(1719828000000)),
        ("yyyy-MM-dd HH:mm VV", "2024-03-31 02:30 Europe/Amsterdam", "America/New_York", Some(1711848600000)),
        ("yyyy-MM-dd XXX", "2024-03-01 +05:00", "America/New_York", Some(1709233200000)),
        ("yyyy-MM-dd VV", "2024-03-01 Asia/Tokyo", "America/New_York", Some(1709218800000)),
        ("yyyy-MM-dd HH:mm", "2024-03-31 01:59", "Europe/Amsterdam", Some(1711846740000)),
        ("yyyy-MM-dd HH:mm", "2024-03-31 02:00", "Europe/Amsterdam", Some(1711846800000)),
        ("yyyy-MM-dd HH:mm", "2024-03-31 02:30", "Europe/Amsterdam", Some(1711848600000)),
        ("yyyy-MM-dd HH:mm", "2024-03-31 02:59", "Europe/Amsterdam", Some(1711850340000)),
        ("yyyy-MM-dd HH:mm", "2024-03-31 03:00", "Europe/Amsterdam", Some(1711846800000)),
        ("yyyy-MM-dd HH:mm", "2024-10-27 01:59", "Europe/Amsterdam", Some(1729987140000)),
        ("yyyy-MM-dd HH:mm", "2024-10-27 02:00", "Europe/Amsterdam", Some(1729987200000)),
        ("yyyy-MM-dd HH:mm", "2024-10-27 02:30", "Europe/Amsterdam", Some(1729989000000)),
        ("yyyy-MM-dd HH:mm", "2024-10-27 02:59", "Europe/Amsterdam", Some(1729990740000)),
        ("yyyy-MM-dd HH:mm", "2024-10-27 03:00", "Europe/Amsterdam", Some(1729994400000)),
        ("yyyy-MM-dd HH:mm", "2024-07-01 12:00", "Europe/Amsterdam", Some(1719828000000)),
        ("yyyy-MM-dd HH:mm", "2024-01-01 00:00", "Europe/Amsterdam", Some(1704063600000)),
        ("yyyy-MM-dd HH:mm", "1969-07-20 20:17", "Europe/Amsterdam", Some(-14186580000)),
        ("yyyy-MM-dd HH:mm", "1970-01-01 00:00", "Europe/Amsterdam", Some(-3600000)),
        ("yyyy-MM-dd HH:mm", "2037-03-29 02:30", "Europe/Amsterdam", Some(2121903000000)),
        ("yyyy-MM-dd HH:mm", "2050-07-01 12:00", "Europe/Amsterdam", Some(2540282400000)),
        ("yyyy-MM-dd HH:mm", "2099-10-25 02:30", "Europe/Amsterdam", Some(4096571400000)),
        ("yyyy-MM-dd HH:mm", "2100-03-28 02:30", "Europe/Amsterdam", Some(4109880600000)),
        ("yyyy-MM-dd HH:mm", "2100-07-01 12:00", "Europe/Amsterdam", Some(4118119200000)),
        ("yyyy-MM-dd HH:mm", "2150-07-01 12:00", "Europe/Amsterdam", Some(5695956000000)),
        ("yyyy-MM-dd HH:mm", "2150-03-29 02:30", "Europe/Amsterdam", Some(5687803800000)),
        ("yyyy-MM-dd HH:mm", "2150-10-25 02:30", "Europe/Amsterdam", Some(5705944200000)),
        ("yyyy-MM-dd HH:mm", "2400-07-01 12:00", "Europe/Amsterdam", Some(13585226400000)),
        ("yyyy-MM-dd HH:mm", "+12024-07-01 12:00", "Europe/Amsterdam", Some(317289348000000)),
        ("yyyy-MM-dd HH:mm", "1200-01-01 12:00", "Europe/Amsterdam", Some(-24298834650000)),
        ("yyyy-MM-dd HH:mm", "1000-06-01 12:00", "Europe/Amsterdam", Some(-30597135450000)),
        ("yyyy-MM-dd HH:mm", "0001-01-01 00:00", "Europe/Amsterdam", Some(-62135597850000)),
        ("yyyy-MM-dd HH:mm", "1890-01-01 00:00", "Europe/Amsterdam", Some(-2524522650000)),
        ("yyyy-MM-dd HH:mm", "1940-06-01 12:00", "Europe/Amsterdam", Some(-933602400000)),
        ("yyyy-MM-dd HH:mm", "2024-03-10 01:59", "America/New_York", Some(1710053940000)),
        ("yyyy-MM-dd HH:mm", "2024-03-10 02:00", "America/New_York", Some(1710054000000)),
        ("yyyy-MM-dd HH:mm", "2024-03-10 02:30", "America/New_York", Some(1710055800000)),
        ("yyyy-MM-dd HH:mm", "2024-03-10 03:00", "America/New_York", Some(1710054000000)),
        ("yyyy-MM-dd HH:mm", "2024-11-03 00:59", "America/New_York", Some(1730609940000)),
        ("yyyy-MM-dd HH:mm", "2024-11-03 01:00", "America/New_York", Some(1730610000000)),
        ("yyyy-MM-dd HH:mm", "2024-11-03 01:30", "America/New_York", Some(1730611800000)),
        ("yyyy-MM-dd HH:mm", "2024-11-03 02:00", "America/New_York", Some(1730617200000)),
        ("yyyy-MM-dd HH:mm", "2150-07-01 12:00", "America/New_York", Some(5695977600000)),
        ("yyyy-MM-dd HH:mm", "2150-11-01 01:30", "America/New_York", Some(5706567000000)),
        ("yyyy-MM-dd", "2024-09-08", "America/Santiago", Some(1725768000000)),
        ("yyyy-MM-dd", "2024-09-07", "America/Santiago", Some(1725681600000)),
        ("yyyy-MM-dd", "2018-11-04", "America/Sao_Paulo", Some(1541300400000)),
        ("yyyy-MM-dd", "2024-03-31", "Asia/Beirut", Some(1711836000000)),
        ("yyyy-MM-dd", "2024-03-31", "Europe/Amsterdam", Some(1711839600000)),
        ("yyyy-MM-dd", "2024-10-06", "Australia/Lord_Howe", Some(1728135000000)),
        ("yyyy-MM-dd", "2011-12-30", "Pacific/Apia", Some(1325239200000)),
        ("yyyy-MM-dd", "2011-12-31", "Pacific/Apia", Some(1325239200000)),
        ("yyyy-MM-dd HH:mm", "2024-10-06 02:15", "Australia/Lord_Howe", Some(1728143100000)),
        ("yyyy-MM-dd HH:mm", "2024-04-07 01:45", "Australia/Lord_Howe", Some(1712414700000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 12:00", "+05:30", Some(1709274600000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 12:00", "UTC+05:30", Some(1709274600000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 12:00", "GMT", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm", "2024-03-01 12:00", "Etc/GMT-3", Some(1709283600000)),
        ("yyyy.MM.dd", "2024.03.01", "Europe/Amsterdam", Some(1709247600000)),
        ("yyyy.MM.dd", "2024-03-01", "Europe/Amsterdam", None),
        ("'Date:' yyyy-MM-dd", "Date: 2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("'Date:' yyyy-MM-dd", "date: 2024-03-01", "Europe/Amsterdam", None),
        ("yyyy-MM-dd''HH", "2024-03-01'12", "Europe/Amsterdam", Some(1709290800000)),
        ("'it''s' yyyy-MM-dd", "it's 2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("yyyy年MM月dd日", "2024年03月01日", "Europe/Amsterdam", Some(1709247600000)),
        ("yyyy年MM月dd日 HH時", "2024年03月01日 12時", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd'T'HH:mm", "2024-03-01T12:30", "Europe/Amsterdam", Some(1709292600000)),
        ("yyyy-MM-dd'T'HH:mm", "2024-03-01t12:30", "Europe/Amsterdam", None),
        ("yyyy-MM-dd / HH:mm", "2024-03-01 / 12:30", "Europe/Amsterdam", Some(1709292600000)),
        ("yyyy-MM-dd[ HH:mm[:ss]]", "2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("yyyy-MM-dd[ HH:mm[:ss]]", "2024-03-01 12:30", "Europe/Amsterdam", Some(1709292600000)),
        ("yyyy-MM-dd[ HH:mm[:ss]]", "2024-03-01 12:30:45", "Europe/Amsterdam", Some(1709292645000)),
        ("yyyy-MM-dd[ HH:mm[:ss]]", "2024-03-01 12", "Europe/Amsterdam", None),
        ("yyyy-MM-dd[ HH:mm[:ss]]", "2024-03-01 12:30:", "Europe/Amsterdam", None),
        ("yyyy-MM-dd['T'HH:mm:ss][XXX]", "2024-03-01T12:00:00+02:00", "", Some(1709287200000)),
        ("yyyy-MM-dd['T'HH:mm:ss][XXX]", "2024-03-01+02:00", "", Some(1709244000000)),
        ("yyyy-MM-dd['T'HH:mm:ss][XXX]", "2024-03-01T12:00:00", "", Some(1709294400000)),
        ("[yyyy-MM-dd][dd/MM/yyyy]", "2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("[yyyy-MM-dd][dd/MM/yyyy]", "01/03/2024", "Europe/Amsterdam", Some(1709247600000)),
        ("[yyyy-MM-dd][dd/MM/yyyy]", "2024-03-0101/03/2024", "Europe/Amsterdam", Some(1709247600000)),
        ("[yyyy-MM-dd][dd/MM/yyyy]", "2024-03-0101/04/2024", "Europe/Amsterdam", None),
        ("[yyyy-MM-dd][dd/MM/yyyy]", "", "Europe/Amsterdam", None),
        ("yyyy-MM-dd[ HH:mm", "2024-03-01 12:30", "Europe/Amsterdam", Some(1709292600000)),
        ("yyyy-MM-dd[ HH:mm", "2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("yyyy-MM-dd[[ HH]:mm]", "2024-03-01 12:30", "Europe/Amsterdam", Some(1709292600000)),
        ("yyyy-MM-dd HH:mm[:ss][.SSS]", "2024-03-01 12:30.123", "Europe/Amsterdam", None),
        ("yyyy-MM-dd[ HH:mm][ XXX]", "2024-03-01 +01:00", "", Some(1709247600000)),
        ("yyyy-MM-dd HH:mm[ XXX]", "2024-03-01 12:00 +25:00", "", None),
        ("yyyy-MM-dd HH:mm[ OOOO]", "2024-03-01 12:00 GMT+1", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm[ O]", "2024-03-01 12:00 GMT+", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:00x", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", " 2024-03-01 12:00:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:00 ", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01T12:00:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01\t12:00:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "２０２４-03-01 12:00:00", "Europe/Amsterdam", None),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:00\n", "Europe/Amsterdam", None),
        ("yyyy-MM-dd", "2024-03-01 ", "Europe/Amsterdam", None),
        ("yyyy-MM-dd", "garbage", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00Z", "Europe/Amsterdam", Some(1709294400000)),
        ("iso8601", "2024-03-01T12:00:00.123+01:00", "Europe/Amsterdam", Some(1709290800123)),
        ("iso8601", "2024-03-01T12:00:00", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01 12:00:00", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01", "Europe/Amsterdam", Some(1709247600000)),
        ("iso8601", "2024-03-01T12:00", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01T12:00Z", "Europe/Amsterdam", Some(1709294400000)),
        ("iso8601", "2024-03-01T12:00:00.1Z", "Europe/Amsterdam", Some(1709294400100)),
        ("iso8601", "2024-03-01T12:00:00.123456789Z", "Europe/Amsterdam", Some(1709294400123)),
        ("iso8601", "2024-03-01T12:00:00.1234567891Z", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00+01:00", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01T12:00:00-05:30", "Europe/Amsterdam", Some(1709314200000)),
        ("iso8601", "2024-03-01T12:00:00+01:00:30", "Europe/Amsterdam", Some(1709290770000)),
        ("iso8601", "2024-03-01T12:00:00z", "Europe/Amsterdam", Some(1709294400000)),
        ("iso8601", "2024-03-01t12:00:00Z", "Europe/Amsterdam", Some(1709294400000)),
        ("iso8601", "2024-03-01T12:00:00+01:00[Europe/Amsterdam]", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01T12:00:00Z[UTC]", "Europe/Amsterdam", Some(1709294400000)),
        ("iso8601", "2024-03-31T02:30:00", "Europe/Amsterdam", Some(1711848600000)),
        ("iso8601", "2024-10-27T02:30:00", "Europe/Amsterdam", Some(1729989000000)),
        ("iso8601", "2024-02-29", "Europe/Amsterdam", Some(1709161200000)),
        ("iso8601", "2023-02-29", "Europe/Amsterdam", None),
        ("iso8601", "2024-02-30T00:00:00", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T24:00:00", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T23:59:60", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00.", "Europe/Amsterdam", Some(1709290800000)),
        ("iso8601", "2024-03-01T12", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00+19:00", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00+18:00", "Europe/Amsterdam", Some(1709229600000)),
        ("iso8601", "2024-3-01", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T1:00:00", "Europe/Amsterdam", None),
        ("iso8601", "", "Europe/Amsterdam", None),
        ("iso8601", "2024-03-01T12:00:00 ", "Europe/Amsterdam", None),
        ("iso8601", "x2024-03-01", "Europe/Amsterdam", None),
        ("iso8601", "1969-12-31T23:59:59.999Z", "Europe/Amsterdam", Some(-1)),
        ("iso8601", "1969-12-31T23:59:59.9999Z", "Europe/Amsterdam", Some(-1)),
        ("iso8601", "0001-01-01T00:00:00Z", "Europe/Amsterdam", Some(-62135596800000)),
        ("iso8601", "9999-12-31T23:59:59.999999999Z", "Europe/Amsterdam", Some(253402300799999)),
        ("iso8601", "2024-03-01+01:00", "Europe/Amsterdam", Some(1709247600000)),
        ("iso8601", "2024-03-01Z", "Europe/Amsterdam", Some(1709251200000)),
        ("epoch_millis", "0", "", Some(0)),
        ("epoch_millis", "1700000000000", "", Some(1700000000000)),
        ("epoch_millis", "-1", "", Some(-1)),
        ("epoch_millis", "-1700000000000", "", Some(-1700000000000)),
        ("epoch_millis", "+5", "", Some(5)),
        ("epoch_millis", "9223372036854775807", "", Some(9223372036854775807)),
        ("epoch_millis", "-9223372036854775808", "", Some(-9223372036854775808)),
        ("epoch_millis", "9223372036854775808", "", None),
        ("epoch_millis", "1.5", "", None),
        ("epoch_millis", "", "", None),
        ("epoch_millis", " 1", "", None),
        ("epoch_millis", "1 ", "", None),
        ("epoch_millis", "0x10", "", None),
        ("epoch_seconds", "0", "", Some(0)),
        ("epoch_seconds", "1700000000", "", Some(1700000000000)),
        ("epoch_seconds", "1700000000.123", "", Some(1700000000123)),
        ("epoch_seconds", "1700000000.1", "", Some(1700000000100)),
        ("epoch_seconds", "1700000000.123456789", "", Some(1700000000123)),
        ("epoch_seconds", "-1.5", "", Some(-1500)),
        ("epoch_seconds", "-1.0005", "", Some(-1001)),
        ("epoch_seconds", "-0.0001", "", Some(-1)),
        ("epoch_seconds", "0.0009", "", Some(0)),
        ("epoch_seconds", "9223372036854775", "", Some(9223372036854775000)),
        ("epoch_seconds", "9223372036854775.807", "", Some(9223372036854775807)),
        ("epoch_seconds", "9223372036854775.808", "", None),
        ("epoch_seconds", "-9223372036854775.808", "", Some(-9223372036854775808)),
        ("epoch_seconds", "-9223372036854775.809", "", None),
        ("epoch_seconds", "1700000000.", "", Some(1700000000000)),
        ("epoch_seconds", "", "", None),
        ("epoch_seconds", ".5", "", Some(500)),
        ("epoch_seconds", "+1.5", "", Some(1500)),
        ("epoch_seconds", "1700000000.1234567891", "", Some(1700000000123)),
        ("epoch_seconds", "--1", "", None),
        ("epoch_seconds", " 1", "", None),
        ("yyyyMMdd[HH]", "2024030112", "", None),
        ("yyyyMMdd[HH]", "20240301", "", Some(1709251200000)),
        ("yyyyMMdd[ HH]", "20240301 12", "", Some(1709294400000)),
        ("yyyy-MM-dd HHmmssn", "2024-03-01 1230451", "", Some(1709296245000)),
        ("yyyy-MM-dd HHmmssn", "2024-03-01 123045123456789", "", Some(1709296245123)),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSSSS", "2024-03-01T12:00:00.123456", "", Some(1709294400123)),
        ("yyyy-MM-dd HH:mm XXX", "2024-03-01 12:00 -00:00", "", Some(1709294400000)),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +01:3", "", None),
        ("yyyy-MM-dd HH:mm X", "2024-03-01 12:00 +0175", "", None),
        ("yyyy-MM-dd HH:mm z", "2024-03-01 12:00 CESTx", "", None),
        ("yyyy-MM-dd HH:mm VV", "2024-03-01 12:00 Europe/Amsterdam/x", "", None),
        ("yyyy-MM-dd HH:mm z", "2024-03-01 12:00 America/Argentina/Buenos_Aires", "", Some(1709305200000)),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:00:00.1x3", "", None),
        ("uuuu-MM-dd G", "0000-01-01 BC", "", Some(-62167219200000)),
        ("uuuu-MM-dd G", "0000-01-01 AD", "", None),
        ("yy-MM-dd", "+24-03-01", "", None),
        ("yyyyDD", "202461", "", None),
        ("yyyyDD", "2024061", "", None),
        ("ddMMMyyyy", "01Mar2024", "", Some(1709251200000)),
        ("dMMMyyyy", "1Mar2024", "", Some(1709251200000)),
        ("dMMMyyyy", "11Mar2024", "", Some(1710115200000)),
        ("HH:mm:ss dd.MM.yyyy", "12:00:00 01.03.2024", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd HH:mm:ss,SSS", "2024-03-01 12:00:00,123", "Europe/Amsterdam", Some(1709290800123)),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2024-03-01T12:00:00.123+0000", "Europe/Amsterdam", Some(1709294400123)),
        ("MMM d, yyyy h:mm:ss a", "Mar 1, 2024 1:05:09 PM", "Europe/Amsterdam", Some(1709294709000)),
        ("MMM d, yyyy h:mm:ss a", "Mar 11, 2024 11:05:09 AM", "America/New_York", Some(1710169509000)),
        ("yyyy-MM-dd HH:mm VV", "2024-03-31 02:30 Europe/Amsterdam", "America/New_York", Some(1711848600000)),
        ("yyyy-MM-dd HH:mm", "2024-10-06 02:30", "Australia/Lord_Howe", Some(1728142200000)),
        ("yyyy-MM-dd HH:mm", "2024-04-07 01:30", "Australia/Lord_Howe", Some(1712413800000)),
        ("yyyy-MM-dd H:mm", "2024-03-01 -0:00", "", None),
        ("u-MM-dd", "-0-03-01", "", None),
        ("u-MM-dd", "-1-03-01", "", Some(-62193657600000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-01 12:00 CST6CDT", "", Some(1719853200000)),
        ("yyyy-MM-dd HH:mm z", "2024-07-01 12:00 CST", "", Some(1719853200000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+01:30", "", Some(1709289000000)),
        ("yyyy-MM-dd HH:mm O", "2024-03-01 12:00 GMT+01:", "", None),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT+01:3", "", None),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT+0", "", None),
        ("yyyy-MM-dd HH:mm ZZZZ", "2024-03-01 12:00 GMT+01:00:3", "", None),
        ("yyyy-MM-dd HH:mm OOOO", "2024-03-01 12:00 GMT+25:00", "", None),
        ("yyyy-MM-dd HH:mm[ OOOO]", "2024-03-01 12:00 GMT+0", "", None),
        ("yyyy-MM-dd HH:mm:ss.SSS", "2024-03-01 12:00:00.", "", None),
        ("yyyy-MM-dd HH:mm:ss[.SSS]", "2024-03-01 12:00:00.", "", None),
        ("yyyy-MM-dd HH:mm:ss[.SSS]", "2024-03-01 12:00:00.5", "", None),
        ("yyyy-MM-dd HH:mm:ss[.SSS][.S]", "2024-03-01 12:00:00.5", "", Some(1709294400500)),
        ("yyyy-MM-dd HH:mm:ss[.SSSSSSSSS][.SSSSSS][.SSS]", "2024-03-01 12:00:00.123456", "", Some(1709294400123)),
        ("[dd.MM.yyyy][yyyy-MM-dd] HH:mm", "2024-03-01 12:00", "Europe/Amsterdam", Some(1709290800000)),
        ("yyyy-MM-dd[ HH:mm:ss][XXX]", "2024-10-27 02:30:00", "Europe/Amsterdam", Some(1729989000000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-10-27 02:30:00", "Europe/London", Some(1729996200000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-31 01:30:00", "Europe/London", Some(1711848600000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-30 12:00:00", "Asia/Kolkata", Some(1711780200000)),
        ("yyyy-MM-dd HH:mm:ss", "1900-01-01 00:00:00", "Asia/Kolkata", Some(-2209008070000)),
        ("yyyy-MM-dd HH:mm:ss", "1890-01-01 00:00:00", "America/New_York", Some(-2524503600000)),
        ("yyyy-MM-dd HH:mm:ss", "1800-01-01 00:00:00", "America/New_York", Some(-5364644638000)),
        ("yyyy-MM-dd HH:mm:ss", "0500-01-01 00:00:00", "America/New_York", Some(-46388660638000)),
        ("uuuu-MM-dd HH:mm:ss", "-5000-01-01 00:00:00", "America/New_York", Some(-219951918238000)),
        ("uuuu-MM-dd HH:mm:ss", "+300000-07-01 00:00:00", "America/New_York", Some(9404934120000000)),
        ("uuuu-MM-dd HH:mm:ss", "+3000-07-01 00:00:00", "America/New_York", None),
        ("uuuu-MM-dd HH:mm:ss", "+3000-03-09 02:30:00", "America/New_York", None),
        ("yyyy-MM-dd HH:mm:ss", "2050-03-27 02:30:00", "Africa/Casablanca", Some(2531957400000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:00", "Asia/Tehran", Some(1709281800000)),
        ("yyyy-MM-dd HH:mm:ss", "2024-03-01 12:00:00", "Pacific/Kiritimati", Some(1709244000000)),
        ("yyyy-MM-dd HH:mm:ss", "2011-12-30 12:00:00", "Pacific/Apia", Some(1325282400000)),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", "2024-03-01T12:00:00.000Z", "", Some(1709294400000)),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSxxx", "2024-03-01T12:00:00.000Z", "", None),
        ("EEEE, MMMM d, yyyy", "Friday, March 1, 2024", "Europe/Amsterdam", Some(1709247600000)),
        ("EEEE, MMMM d, yyyy", "Friday, March 01, 2024", "Europe/Amsterdam", Some(1709247600000)),
        ("EEE MMM d HH:mm:ss yyyy", "Fri Mar  1 12:00:00 2024", "Europe/Amsterdam", None),
    ];

    #[test]
    fn java_known_answers() {
        let mut bad = Vec::new();
        for &(pattern, value, zone, want) in JAVA_CASES {
            let zone = (!zone.is_empty()).then_some(zone);
            match TimestampFormat::new(pattern, zone) {
                Ok(f) => {
                    let got = f.parse(value);
                    if got != want {
                        bad.push(format!(
                            "{pattern:?} {value:?} {zone:?}: got {got:?}, Java {want:?}"
                        ));
                    }
                }
                Err(e) => bad.push(format!(
                    "{pattern:?} {zone:?}: config error {e}, Java {want:?}"
                )),
            }
        }
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    /// Patterns that Java 17's `DateTimeFormatter.ofPattern` rejects.
    #[test]
    fn patterns_java_rejects_are_config_errors() {
        #[rustfmt::skip]
        const JAVA_REJECTS: &[&str] = &[
        "yyyy-MM-dd HH:mm:ss {",
        "yyyy-MM-dd #",
        "ddd-MM-yyyy",
        "yyyy-MM-dd HHH",
        "yyyy-MM-dd HH:mm aa",
        "yyyy-MM-dd HH:mm VVV",
        "yyyy-MM-dd HH:mm V",
        "yyyy-MM-dd 'T",
        "yyyy]-MM-dd",
        "yyyy-MM-dd bb",
        "yyyy-MM-dd HH:mm:ss.SSSSSSSSSS",
        "yyyy-MM-dd HH:mm XXXXXX",
        "yyyy-MM-dd HH:mm zzzzz",
        "yyyy-MM-dd HH:mm OO",
        "yyyyyyyyyyyyyyyyyyyy-MM-dd",
        "yyyy-MM-dd EEEEEE",
        "yyyy-DDDD",
        "yyyy-MM-dd HH:mm ZZZZZZ",
        "yyyy-MMMMMM-dd",
        "yyyy-MM-dd GGGGGG",
        ];
        for p in JAVA_REJECTS {
            config_error(p, None);
        }
    }

    /// Patterns Java accepts but that can never give an instant (Java rejects every value),
    /// and letters we do not support: rejected up front on purpose.
    #[test]
    fn patterns_that_cannot_give_an_instant_are_config_errors() {
        for (pattern, message) in [
            ("HH:mm", "no complete date"),
            ("yyyy-MM", "no complete date"),
            ("MM-dd", "no complete date"),
            ("", "no complete date"),
            ("G", "no complete date"),
            (
                "yyyy-MM-dd hh:mm",
                "pattern letter 'h' at position 11 needs the AM/PM marker 'a'",
            ),
            (
                "yyyy-MM-dd KK:mm",
                "pattern letter 'K' at position 11 needs the AM/PM marker 'a'",
            ),
            (
                "yyyy-MM-dd a",
                "pattern letter 'a' at position 11 needs an hour",
            ),
            (
                "yyyy-MM-dd mm",
                "pattern letter 'm' at position 11 needs an hour",
            ),
            (
                "yyyy-MM-dd HH:ss",
                "seconds ('s' at position 14) but no minutes",
            ),
            (
                "yyyy-MM-dd HH:mm.SSS",
                "fraction of second (at position 17)",
            ),
            (
                "yyyy-MM-dd Q",
                "unsupported pattern letter 'Q' at position 11",
            ),
            ("YYYY-MM-dd", "unsupported pattern letter 'Y' at position 0"),
            (
                "yyyy-MM-dd w",
                "unsupported pattern letter 'w' at position 11",
            ),
            (
                "yyyy-MM-dd HH:mm v",
                "unsupported pattern letter 'v' at position 17",
            ),
            (
                "yyyy-MM-dd B",
                "unsupported pattern letter 'B' at position 11",
            ),
            (
                "yyyy-MMMMM-dd",
                "'M' repeated 5 times (narrow text) at position 5",
            ),
            (
                "EEEEE yyyy-MM-dd",
                "'E' repeated 5 times (narrow text) at position 0",
            ),
        ] {
            let e = config_error(pattern, None);
            assert!(e.contains(message), "{pattern:?}: {e}");
        }
    }

    #[test]
    fn error_messages_name_the_problem_and_position() {
        for (pattern, message) in [
            ("yyyy-Q", "unsupported pattern letter 'Q' at position 5"),
            ("yyyy-MM-dd bb", "unknown pattern letter 'b' at position 11"),
            ("yyyy-MM-dd 'T", "unclosed quote starting at position 11"),
            ("yyyy]-MM-dd", "']' without a matching '[' at position 4"),
            (
                "ddd-MM-yyyy",
                "too many pattern letters 'd' (3) at position 0",
            ),
            ("yyyy-MM-dd #", "reserved character '#' at position 11"),
            (
                "yyyy-MM-dd HH:mm VVV",
                "'V' at position 17 must appear exactly twice",
            ),
            ("'日付' yyyy-MM-dd Q", "at position 16"), // positions count characters, not bytes
        ] {
            let e = config_error(pattern, None);
            assert!(e.contains(message), "{pattern:?}: {e}");
        }
        let e = config_error("yyyy-MM-dd", Some("Europe/Amsterdm"));
        assert_eq!(e, "unknown time zone 'Europe/Amsterdm'");
        config_error("yyyy-MM-dd", Some("EST")); // not a JDK region id either
        config_error("yyyy-MM-dd", Some("+19:00"));
        config_error("yyyy-MM-dd", Some(""));
        let nested = format!("yyyy-MM-dd{}", "[".repeat(100));
        assert!(config_error(&nested, None).contains("nested too deeply"));
    }

    #[test]
    fn error_messages_and_debug_never_contain_values() {
        // a pattern error does not echo the pattern's literal text
        let e = config_error("'Jane Doe' yyyy-MM-dd Q", None);
        assert!(!e.contains("Jane"), "{e}");
        // parsing keeps nothing of the value
        let f = fmt("yyyy-MM-dd HH:mm:ss", Some("Europe/Amsterdam"));
        for v in [
            "2024-03-01 12:34:56",
            "1987-06-05 04:03:02",
            "Jane Doe 1987",
        ] {
            f.parse(v);
        }
        let shown = format!("{f:?}");
        assert!(
            !shown.contains("1987") && !shown.contains("Jane"),
            "{shown}"
        );
    }

    #[test]
    fn default_zones() {
        let at = |zone: &str| fmt("yyyy-MM-dd HH:mm", Some(zone)).parse("2024-03-01 12:00");
        assert_eq!(at("UTC"), Some(1_709_294_400_000));
        assert_eq!(at("Z"), Some(1_709_294_400_000));
        assert_eq!(at("Etc/UTC"), Some(1_709_294_400_000));
        assert_eq!(at("+05:30"), Some(1_709_274_600_000));
        assert_eq!(at("+0530"), Some(1_709_274_600_000));
        assert_eq!(at("UTC+05:30"), Some(1_709_274_600_000));
        assert_eq!(at("GMT-01"), Some(1_709_298_000_000));
        assert_eq!(at("Europe/Amsterdam"), Some(1_709_290_800_000));
        assert_eq!(fmt("iso8601", None).default_time_zone(), "UTC");
        assert_eq!(fmt("iso8601", Some("+05:30")).default_time_zone(), "+05:30");
        assert_eq!(
            fmt("iso8601", Some("Europe/Amsterdam")).default_time_zone(),
            "Europe/Amsterdam"
        );
    }

    /// Java's `ZonedDateTime.of`: a time in a gap moves forward by the gap, a time in an
    /// overlap takes the earlier (summer) offset. Values from Java 17, as in `JAVA_CASES`.
    #[test]
    fn dst_gap_and_overlap() {
        let ams = fmt("yyyy-MM-dd HH:mm", Some("Europe/Amsterdam"));
        // 02:30 does not exist on 2024-03-31: 03:30 CEST = 01:30Z
        assert_eq!(ams.parse("2024-03-31 02:30"), Some(1_711_848_600_000));
        assert_eq!(ams.parse("2024-03-31 03:30"), Some(1_711_848_600_000));
        // 02:30 happens twice on 2024-10-27: the first, +02:00 = 00:30Z
        assert_eq!(ams.parse("2024-10-27 02:30"), Some(1_729_989_000_000));
        let ny = fmt("yyyy-MM-dd HH:mm", Some("America/New_York"));
        assert_eq!(ny.parse("2024-03-10 02:30"), Some(1_710_055_800_000));
        assert_eq!(ny.parse("2024-11-03 01:30"), Some(1_730_611_800_000));
        // the value's own offset or zone wins over the default zone
        let with_offset = fmt("yyyy-MM-dd HH:mm XXX", Some("America/New_York"));
        assert_eq!(
            with_offset.parse("2024-10-27 02:30 +01:00"),
            Some(1_729_992_600_000)
        );
        let with_zone = fmt("yyyy-MM-dd HH:mm VV", Some("America/New_York"));
        assert_eq!(
            with_zone.parse("2024-10-27 02:30 Europe/Amsterdam"),
            Some(1_729_989_000_000)
        );
    }

    /// The (local day -> offset) cache of the default zone gives the same answers as the
    /// uncached lookup for a value's own zone, in any order.
    #[test]
    fn offset_cache_agrees_with_uncached_lookup() {
        for zone in [
            "Europe/Amsterdam",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            let cached = fmt("yyyy-MM-dd HH:mm", Some(zone));
            let uncached = fmt("yyyy-MM-dd HH:mm VV", None);
            let mut values = Vec::new();
            let start = days_from_civil(2024, 1, 1) * 86_400;
            for i in 0..(366 * 24 * 4) {
                let (y, m, d) = civil_from_days((start + i * 900).div_euclid(86_400));
                let secs = (start + i * 900).rem_euclid(86_400);
                values.push(format!(
                    "{y:04}-{m:02}-{d:02} {:02}:{:02}",
                    secs / 3600,
                    secs / 60 % 60
                ));
            }
            let forward: Vec<_> = values.iter().map(|v| cached.parse(v)).collect();
            let backward: Vec<_> = values.iter().rev().map(|v| cached.parse(v)).collect();
            for (i, v) in values.iter().enumerate() {
                let want = uncached.parse(&format!("{v} {zone}"));
                assert!(want.is_some(), "{v}");
                assert_eq!(forward[i], want, "{zone} {v}");
                assert_eq!(backward[values.len() - 1 - i], want, "{zone} {v}");
            }
        }
    }

    /// Where we accept more than Java's counterpart, on purpose.
    #[test]
    fn deliberate_extensions() {
        let iso = fmt("iso8601", Some("Europe/Amsterdam"));
        // offsets without colon or minutes (Java's ISO_DATE_TIME wants +01:00)
        assert_eq!(iso.parse("2024-03-01T12:00:00+01"), Some(1_709_290_800_000));
        assert_eq!(
            iso.parse("2024-03-01T12:00:00+0100"),
            Some(1_709_290_800_000)
        );
        assert_eq!(
            iso.parse("2024-03-01T12:00:00+010000"),
            Some(1_709_290_800_000)
        );
        assert_eq!(iso.parse("2024-03-01T12:00:00+01:"), None);
        // a zone without an offset
        assert_eq!(
            iso.parse("2024-07-01T12:00:00[Europe/Amsterdam]"),
            Some(1_719_828_000_000)
        );
        assert_eq!(
            iso.parse("2024-07-01T12:00:00[America/New_York]"),
            Some(1_719_849_600_000)
        );
        assert_eq!(iso.parse("2024-07-01T12:00:00[]"), None);
        assert_eq!(iso.parse("2024-07-01T12:00:00[Nowhere]"), None);
        // a date alone means the start of the day, with a pattern as well
        let date = fmt("yyyy-MM-dd", Some("Europe/Amsterdam"));
        assert_eq!(date.parse("2024-03-01"), Some(1_709_247_600_000));
        // exponents and non-ASCII digits are not numbers here
        assert_eq!(fmt("epoch_seconds", None).parse("1e3"), None);
        assert_eq!(fmt("epoch_millis", None).parse("١٢"), None);
        assert_eq!(fmt("epoch_seconds", None).parse("-0.0000000001"), Some(-1));
        assert_eq!(fmt("epoch_seconds", None).parse("."), None);
        assert_eq!(fmt("epoch_seconds", None).parse("-"), None);
    }

    #[test]
    fn both_example_patterns() {
        let a = fmt("yyyy-MM-dd HH:mm:ss", Some("Europe/Amsterdam"));
        assert_eq!(a.parse("2024-03-01 12:34:56"), Some(1_709_292_896_000));
        let b = fmt("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", None);
        assert_eq!(
            b.parse("01/03/2024T12:34:56.789+01:00"),
            Some(1_709_292_896_789)
        );
        assert_eq!(b.parse("01/03/2024T12:34:56.789"), None);
    }

    #[test]
    fn is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<TimestampFormat>();
        let f = fmt("yyyy-MM-dd HH:mm", Some("Europe/Amsterdam"));
        assert_eq!(f.parse("2024-03-01 12:00"), Some(1_709_290_800_000));
        let g = f.clone();
        assert_eq!(g.parse("2024-07-01 12:00"), Some(1_719_828_000_000));
        let h = std::thread::spawn(move || g.parse("2024-03-01 12:00")).join();
        assert_eq!(h.ok().flatten(), Some(1_709_290_800_000));
    }

    #[test]
    fn calendar_helpers_roundtrip() {
        for days in (-1_000_000..1_000_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
        assert_eq!(day_of_week(0), 4); // 1970-01-01 was a Thursday
        assert_eq!(days_from_civil(2024, 3, 1), 19_783);
    }

    #[test]
    fn zone_name_tables_are_sorted() {
        for table in [ZONE_SHORT_NAMES, ZONE_FULL_NAMES] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(table.iter().all(|(n, _)| n.len() <= MAX_ID_LEN));
        }
    }

    const FORMATS: &[&str] = &[
        "epoch_millis",
        "epoch_seconds",
        "iso8601",
        "yyyy-MM-dd HH:mm:ss",
        "dd/MM/yyyy'T'HH:mm:ss.SSSXXX",
        "yyyyMMddHHmmssSSS",
        "y-M-d H:m:s.n",
        "uuuuMMdd[ HH[:mm[:ss]]][X]",
        "EEE, d MMM yyyy hh:mm:ss a Z",
        "EEEE dd MMMM uuuu G KK:mm a ZZZZ",
        "yyyy-DDD kk:mm:ss O",
        "yyyy-MM-dd HH:mm z",
        "yyyy-MM-dd HH:mm zzzz",
        "yyyy-MM-dd HH:mm VV",
        "yyyy-MM-dd'T'HH:mm[:ss][.SSS][XXXXX][xx]['['VV']']",
        "[yyyy-MM-dd][dd.MM.yy][yyyyMMdd]",
    ];

    proptest! {
        #[test]
        fn parse_never_panics(value in "\\PC{0,40}") {
            for f in FORMATS {
                let _ = fmt(f, Some("Europe/Amsterdam")).parse(&value);
            }
        }

        #[test]
        fn parse_never_panics_on_date_like_text(
            value in "[-+0-9:.TZ /\\[\\]a-zA-Z_]{0,40}",
        ) {
            for f in FORMATS {
                let _ = fmt(f, Some("America/New_York")).parse(&value);
            }
        }

        #[test]
        fn roundtrip_with_offset(
            millis in -62_135_596_800_000i64..253_402_300_799_999,
            offset_minutes in -18 * 60..=18 * 60i32,
        ) {
            let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("in range");
            let dt = DateTime::from_timestamp_millis(millis).expect("in range").with_timezone(&offset);
            let text = dt.format("%d/%m/%Y'T'%H:%M:%S%.3f%:z").to_string();
            let text = text.replace("'T'", "T");
            let text = if offset_minutes == 0 { text.replace("+00:00", "Z") } else { text };
            let f = fmt("dd/MM/yyyy'T'HH:mm:ss.SSSXXX", Some("Asia/Tokyo"));
            prop_assert_eq!(f.parse(&text), Some(millis), "{}", text);
            let iso = dt.format("%Y-%m-%dT%H:%M:%S%.f%:z").to_string();
            prop_assert_eq!(fmt("iso8601", None).parse(&iso), Some(millis), "{}", iso);
        }

        #[test]
        fn roundtrip_in_a_zone(millis in 0i64..4_102_444_800_000) {
            let dt = DateTime::from_timestamp_millis(millis).expect("in range").with_timezone(&Tz::Europe__Amsterdam);
            let text = dt.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
            let f = fmt("yyyy-MM-dd HH:mm:ss.SSS", Some("Europe/Amsterdam"));
            let got = f.parse(&text);
            // in the autumn overlap the earlier offset wins, one hour before
            prop_assert!(got == Some(millis) || got == Some(millis - 3_600_000), "{}", text);
            prop_assert_eq!(fmt("epoch_millis", None).parse(&millis.to_string()), Some(millis));
        }
    }
}
