//! RFC 3339 formatting that cannot fail for the dates portcullis handles.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats `t` as RFC 3339 in UTC (`2026-11-28T15:23:49Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}
