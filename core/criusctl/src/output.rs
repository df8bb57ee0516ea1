//! How the list, inspect and stats verbs print: crictl's `-o json|yaml|table`
//! (the JSON and YAML are the CRI messages in the protobuf JSON mapping with
//! proto field names, as crictl prints them), and an aligned table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

/// `-o`: the output format of a verb.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// `value` as pretty JSON or YAML; `None` for [`Format::Table`], which each
/// verb lays out itself.
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_saphyr::to_string(value)?),
    })
}

/// Prints `value` in `format`, or calls `table` for [`Format::Table`].
pub fn print<T: Serialize>(format: Format, value: &T, table: impl FnOnce()) -> Result<()> {
    match structured(format, value)? {
        Some(text) => print!("{text}"),
        None => table(),
    }
    Ok(())
}

/// Columns left-aligned to the widest cell plus three spaces, as crictl's
/// tables are.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// crictl shows ids cut to 13 characters unless `--no-trunc`.
pub fn id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(13).collect()
    }
}

/// "5 minutes ago" for a CRI timestamp (nanoseconds since the epoch).
pub fn ago(nanos: i64) -> String {
    let then = UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    let Ok(age) = SystemTime::now().duration_since(then) else {
        return "Less than a second ago".into();
    };
    let secs = age.as_secs();
    let (n, unit) = match secs {
        0 => return "Less than a second ago".into(),
        1..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=1_209_599 => (secs / 86_400, "day"),
        1_209_600..=5_183_999 => (secs / 604_800, "week"),
        5_184_000..=63_071_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{plural} ago")
}

/// Bytes as crictl prints them: decimal units, four significant digits
/// (`639kB`, `1.5MB`, `4.194MB`).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let integer_digits = if value < 1.0 {
        1
    } else {
        value.log10().floor() as usize + 1
    };
    let decimals = 4usize.saturating_sub(integer_digits);
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let mut t = Table::new(&["POD ID", "NAME"]);
        t.row(vec!["abc".into(), "web".into()]);
        t.row(vec!["abcdefghij".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "POD ID       NAME\nabc          web\nabcdefghij   x\n"
        );
    }

    #[test]
    fn sizes_and_ids_read_as_crictl_prints_them() {
        assert_eq!(size(999), "999B");
        assert_eq!(size(1_500_000), "1.5MB");
        assert_eq!(size(4_194_304), "4.194MB");
        assert_eq!(size(638_976), "639kB");
        assert_eq!(size(0), "0B");
        assert_eq!(id("0123456789abcdef", false), "0123456789abc");
        assert_eq!(id("0123456789abcdef", true), "0123456789abcdef");
    }

    #[test]
    fn ages_are_in_the_largest_whole_unit() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let nanos = |secs_ago: u64| (now - Duration::from_secs(secs_ago)).as_nanos() as i64;
        assert_eq!(ago(nanos(5)), "5 seconds ago");
        assert_eq!(ago(nanos(60)), "1 minute ago");
        assert_eq!(ago(nanos(7200)), "2 hours ago");
    }
}
