//! Stop signals: from the CRI `ContainerConfig.stop_signal`, else from the
//! image's `StopSignal` carried as a spec annotation, else SIGTERM.

use std::collections::HashMap;
use std::str::FromStr;

use crius_shim_api::cri::Signal as CriSignal;

/// Spec annotations that may carry the image's stop signal (the first one
/// present wins): crius' own key and the keys other runtimes use.
pub const STOP_SIGNAL_ANNOTATIONS: &[&str] = &[
    "io.crius.image.stop-signal",
    "org.opencontainers.image.stopSignal",
    "io.containerd.image.config.stop-signal",
];

/// Parses `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMIN+3` into a number.
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let offset = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')?.parse::<i32>().ok()?
        };
        let n = libc::SIGRTMIN() + offset;
        return (n <= libc::SIGRTMAX()).then_some(n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let offset = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')?.parse::<i32>().ok()?
        };
        let n = libc::SIGRTMAX() - offset;
        return (n >= libc::SIGRTMIN()).then_some(n);
    }
    // Aliases nix does not know by these names.
    let name = match name {
        "CLD" => "CHLD",
        "POLL" => "IO",
        "IOT" => "ABRT",
        other => other,
    };
    nix::sys::signal::Signal::from_str(&format!("SIG{name}"))
        .ok()
        .map(|s| s as i32)
}

/// The CRI enum value as a signal number (`None` for the runtime default).
pub fn from_cri(signal: i32) -> Option<i32> {
    let signal = CriSignal::try_from(signal).ok()?;
    if signal == CriSignal::RuntimeDefault {
        return None;
    }
    // "SIGNAL_SIGRTMINPLUS3" -> "SIGRTMIN+3".
    let name = signal.as_str_name().strip_prefix("SIGNAL_")?;
    parse_signal(&name.replace("PLUS", "+").replace("MINUS", "-"))
}

/// The stop signal for a container.
pub fn stop_signal(cri_signal: i32, annotations: Option<&HashMap<String, String>>) -> i32 {
    if let Some(n) = from_cri(cri_signal) {
        return n;
    }
    if let Some(annotations) = annotations {
        for key in STOP_SIGNAL_ANNOTATIONS {
            if let Some(n) = annotations.get(*key).and_then(|v| parse_signal(v)) {
                return n;
            }
        }
    }
    libc::SIGTERM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(parse_signal("RTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_signal("SIGCLD"), Some(libc::SIGCHLD));
        assert_eq!(parse_signal("nonsense"), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn cri_enum_maps() {
        assert_eq!(from_cri(CriSignal::RuntimeDefault as i32), None);
        assert_eq!(from_cri(CriSignal::Sigusr1 as i32), Some(libc::SIGUSR1));
        assert_eq!(
            from_cri(CriSignal::Sigrtminplus1 as i32),
            Some(libc::SIGRTMIN() + 1)
        );
        assert_eq!(
            from_cri(CriSignal::Sigrtmaxminus2 as i32),
            Some(libc::SIGRTMAX() - 2)
        );
    }

    #[test]
    fn precedence() {
        let ann: HashMap<String, String> = [(
            "org.opencontainers.image.stopSignal".to_string(),
            "SIGINT".to_string(),
        )]
        .into();
        assert_eq!(stop_signal(0, Some(&ann)), libc::SIGINT);
        assert_eq!(
            stop_signal(CriSignal::Sigquit as i32, Some(&ann)),
            libc::SIGQUIT
        );
        assert_eq!(stop_signal(0, None), libc::SIGTERM);
    }
}
