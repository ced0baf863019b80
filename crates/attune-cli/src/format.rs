//! Human-readable output: aligned tables, timestamps and durations.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// Formats rows under headers in left-aligned columns two spaces apart, without trailing
/// spaces; every line ends with a newline.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(current) => *current = (*current).max(width),
                None => widths.push(width),
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    let mut output = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if index + 1 < row.len() {
                let padding = widths[index].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', padding));
            }
        }
        output.push_str(line.trim_end());
        output.push('\n');
    }
    output
}

/// Parses an RFC 3339 timestamp from the API.
pub fn parse_timestamp(timestamp: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|parsed| parsed.with_timezone(&Utc))
}

/// `2024-05-01 12:00:03Z`, or the text as given when it does not parse.
pub fn format_timestamp(timestamp: &str) -> String {
    match parse_timestamp(timestamp) {
        Some(parsed) => parsed.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => timestamp.to_string(),
    }
}

/// `850ms`, `12.3s`, `3m05s`, `2h04m`.
pub fn format_duration(duration: Duration) -> String {
    let milliseconds = duration.as_millis();
    if milliseconds < 1_000 {
        return format!("{milliseconds}ms");
    }
    let seconds = duration.as_secs();
    if seconds < 60 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    if seconds < 3_600 {
        return format!("{}m{:02}s", seconds / 60, seconds % 60);
    }
    format!("{}h{:02}m", seconds / 3_600, (seconds % 3_600) / 60)
}

/// Time from `started` to `finished`, or to `now` while still running.
pub fn elapsed(
    started: Option<&str>,
    finished: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let started = parse_timestamp(started?)?;
    let end = match finished {
        Some(finished) => parse_timestamp(finished)?,
        None => now,
    };
    (end - started).to_std().ok()
}

/// `text` cut to `max_chars` characters, with `...` when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let table = format_table(
            &["ID", "ACTION", "STATUS"],
            &[
                vec![
                    "7".to_string(),
                    "hello.greet".to_string(),
                    "running".to_string(),
                ],
                vec!["12".to_string(), "hello.stats".to_string(), "".to_string()],
            ],
        );
        assert_eq!(
            table,
            "ID  ACTION       STATUS\n7   hello.greet  running\n12  hello.stats\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let table = format_table(
            &["NAME", "X"],
            &[vec!["héllo".to_string(), "1".to_string()]],
        );
        assert_eq!(table, "NAME   X\nhéllo  1\n");
    }

    #[test]
    fn empty_tables_have_headers() {
        assert_eq!(format_table(&["REF", "VERSION"], &[]), "REF  VERSION\n");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(7_440)), "2h04m");
    }

    #[test]
    fn timestamps_are_shown_in_utc() {
        assert_eq!(
            format_timestamp("2024-05-01T14:00:03+02:00"),
            "2024-05-01 12:00:03Z"
        );
        assert_eq!(format_timestamp("yesterday"), "yesterday");
    }

    #[test]
    fn elapsed_uses_now_while_running() {
        let now = parse_timestamp("2024-05-01T12:00:10Z").expect("timestamp");
        assert_eq!(
            elapsed(
                Some("2024-05-01T12:00:00Z"),
                Some("2024-05-01T12:00:01.5Z"),
                now
            ),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            elapsed(Some("2024-05-01T12:00:00Z"), None, now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(elapsed(None, None, now), None);
    }

    #[test]
    fn truncation_marks_cut_text() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long description", 10), "a long ...");
    }
}
