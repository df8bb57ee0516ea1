//! `criusctl logs`: a container's CRI log file (`<time> <stream> <P|F>
//! <text>` per line, `P` for a partial line continued on the next entry)
//! printed as the container wrote it, with crictl's `--tail`, `--since`,
//! `--timestamps` and `-f`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset, Utc};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// What to print of the log.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only the last N lines (`None`: all).
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<FixedOffset>>,
    /// Prefix each line with the time it was written.
    pub timestamps: bool,
}

/// One whole line of output, joined from its partial entries.
#[derive(Debug, PartialEq)]
struct Line {
    time: String,
    text: String,
}

/// Joins entries into lines; an unfinished partial line stays in `pending`
/// (the writer continues it in an entry not yet written).
#[derive(Default)]
struct Joiner {
    pending: Option<Line>,
}

impl Joiner {
    fn push(&mut self, entry: &str, out: &mut Vec<Line>) {
        let mut parts = entry.splitn(4, ' ');
        let (Some(time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let text = parts.next().unwrap_or("");
        let line = self.pending.get_or_insert_with(|| Line {
            time: time.to_string(),
            text: String::new(),
        });
        line.text.push_str(text);
        if tag != "P" {
            out.extend(self.pending.take());
        }
    }
}

fn selected(lines: Vec<Line>, selection: &Selection) -> Vec<Line> {
    let mut lines: Vec<Line> = match selection.since {
        Some(since) => lines
            .into_iter()
            .filter(|l| DateTime::parse_from_rfc3339(&l.time).is_ok_and(|t| t >= since))
            .collect(),
        None => lines,
    };
    if let Some(n) = selection.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
}

fn render(lines: &[Line], selection: &Selection) -> String {
    let mut out = String::new();
    for line in lines {
        if selection.timestamps {
            out.push_str(&line.time);
            out.push(' ');
        }
        out.push_str(&line.text);
        out.push('\n');
    }
    out
}

/// The log as text, selected; partial lines at the end are printed as they
/// stand (the container may never finish them).
pub fn format(text: &str, selection: &Selection) -> String {
    let mut joiner = Joiner::default();
    let mut lines = Vec::new();
    for entry in text.lines() {
        joiner.push(entry, &mut lines);
    }
    lines.extend(joiner.pending.take());
    render(&selected(lines, selection), selection)
}

/// `--since`: an RFC 3339 time, or a duration back from now (`90s`, `5m`,
/// `1h30m`).
pub fn parse_since(value: &str) -> Result<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t);
    }
    let back = parse_duration(value)
        .with_context(|| format!("--since {value:?}: neither RFC 3339 nor a duration"))?;
    let back = chrono::Duration::from_std(back)?;
    Ok((Utc::now() - back).fixed_offset())
}

fn parse_duration(value: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().context("a number before each unit")?;
        number.clear();
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => bail!("unknown unit {c:?} (s, m, h)"),
        };
        total += Duration::from_secs_f64(n * unit);
    }
    if !number.is_empty() || value.is_empty() {
        bail!("a duration ends with its unit (s, m, h)");
    }
    Ok(total)
}

/// Prints the selection of the log at `path`; with `follow`, keeps printing
/// what is appended until `running` says the container has stopped and the
/// file has no more.
pub async fn print<F, Fut>(
    path: &str,
    selection: &Selection,
    follow: bool,
    running: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening log file {path}"))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .await
        .with_context(|| format!("reading log file {path}"))?;
    if !follow {
        return emit(&format(&text, selection));
    }
    // A partial last entry is completed by later writes: it is read again.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut joiner = Joiner::default();
    let mut lines = Vec::new();
    for entry in text[..complete].lines() {
        joiner.push(entry, &mut lines);
    }
    emit(&render(&selected(lines, selection), selection))?;
    let mut offset = complete as u64;
    let mut buf = String::new();
    let mut idle = 0u32;
    loop {
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        buf.clear();
        file.read_to_string(&mut buf).await?;
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        if complete > 0 {
            idle = 0;
            offset += complete as u64;
            let mut lines = Vec::new();
            for entry in buf[..complete].lines() {
                joiner.push(entry, &mut lines);
            }
            // `--since` still applies; `--tail` was for what was there.
            let follow_selection = Selection {
                tail: None,
                ..selection.clone()
            };
            emit(&render(&selected(lines, &follow_selection), selection))?;
            continue;
        }
        idle += 1;
        // About once a second without news: has the writer stopped?
        if idle.is_multiple_of(5) && !running().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:00.000000000Z stdout P hel\n\
        2026-01-01T00:00:00.100000000Z stdout F lo world\n\
        2026-01-01T00:00:01.000000000Z stderr F oops\n\
        2026-01-01T00:00:02.000000000Z stdout F third\n";

    #[test]
    fn cri_log_lines_are_stripped_and_partials_joined() {
        let text = "2026-01-01T00:00:00.000000000Z stdout P hel\n2026-01-01T00:00:00.1Z stdout F lo world\n2026-01-01T00:00:00.2Z stderr F oops\n";
        assert_eq!(format(text, &Selection::default()), "hello world\noops\n");
    }

    #[test]
    fn partial_entries_are_joined_into_lines() {
        assert_eq!(
            format(LOG, &Selection::default()),
            "hello world\noops\nthird\n"
        );
    }

    #[test]
    fn tail_counts_whole_lines_and_timestamps_are_the_first_entrys() {
        let selection = Selection {
            tail: Some(2),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            format(LOG, &selection),
            "2026-01-01T00:00:01.000000000Z oops\n2026-01-01T00:00:02.000000000Z third\n"
        );
        let all = Selection {
            tail: Some(0),
            ..Default::default()
        };
        assert_eq!(format(LOG, &all), "");
    }

    #[test]
    fn since_keeps_lines_written_from_then_on() {
        let selection = Selection {
            since: Some(parse_since("2026-01-01T00:00:01Z").unwrap()),
            ..Default::default()
        };
        assert_eq!(format(LOG, &selection), "oops\nthird\n");
    }

    #[test]
    fn since_takes_go_style_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        let t = parse_since("10m").unwrap();
        let back = Utc::now().fixed_offset() - t;
        assert!((back.num_seconds() - 600).abs() <= 2, "{back}");
    }
}
