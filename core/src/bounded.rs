//! Bounding what a client sent before it is echoed back.
//!
//! Error messages quote names, ids and paths from the request so the
//! kubelet's log says what was wrong; a client that sends a megabyte-long
//! name must not get a megabyte back (it overflows the client's metadata
//! limit and hides the real error). Every user-supplied string goes through
//! [`bounded`] when quoted; [`bound_message`] caps whole messages at the RPC
//! edge as a last line.

use std::borrow::Cow;

/// Characters of one quoted user-supplied string.
pub const MAX_QUOTED_CHARS: usize = 128;
/// Characters of one whole error message sent to a client.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// Longest pod or container name, namespace or uid accepted: a Kubernetes
/// object name is at most a DNS subdomain (253 bytes), a container name a
/// DNS label (63).
pub const MAX_NAME_BYTES: usize = 253;

/// `Err` naming `what` (and a bounded quote of `value`) when `value` is
/// longer than [`MAX_NAME_BYTES`].
pub fn check_name_length(what: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} {:?} is longer than {MAX_NAME_BYTES} bytes",
            bounded(value)
        ));
    }
    Ok(())
}

/// `s` cut to [`MAX_QUOTED_CHARS`] characters, with "…" and the full length
/// when cut.
pub fn bounded(s: &str) -> Cow<'_, str> {
    cut(s, MAX_QUOTED_CHARS)
}

/// A whole message cut to [`MAX_MESSAGE_CHARS`] characters.
pub fn bound_message(s: String) -> String {
    match cut(&s, MAX_MESSAGE_CHARS) {
        Cow::Borrowed(_) => s,
        Cow::Owned(cut) => cut,
    }
}

fn cut(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_kept_and_long_ones_cut_on_a_char_boundary() {
        assert_eq!(bounded("web"), "web");
        let exact = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(bounded(&exact), exact.as_str());
        let long = "é".repeat(1 << 20);
        let b = bounded(&long);
        assert!(b.starts_with(&"é".repeat(MAX_QUOTED_CHARS)));
        assert!(b.ends_with(&format!("… ({} bytes)", long.len())), "{b}");
        assert!(b.chars().count() < MAX_QUOTED_CHARS + 30);
        let msg = bound_message("m".repeat(MAX_MESSAGE_CHARS * 3));
        assert!(msg.chars().count() < MAX_MESSAGE_CHARS + 30);
    }
}
