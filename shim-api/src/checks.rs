//! Checks of what the core sends that every handler needs the same way:
//! ids that become file names, signals, terminal sizes and exec requests.
//! The core validates CRI requests already; these keep a handler safe on
//! its own (a plugin or shim may be driven by something else).

use crate::types::ExecRequest;
use crate::{HandlerError, HandlerResult};

/// An id (sandbox, container, exec) that becomes a file name or a runtime
/// container name: 1-128 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn id(what: &str, id: &str) -> HandlerResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(140).collect();
        Err(HandlerError::invalid_argument(format!(
            "invalid {what} {shown:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// A signal number (1-64).
pub fn signal(signal: u32) -> HandlerResult<i32> {
    if (1..=64).contains(&signal) {
        Ok(signal as i32)
    } else {
        Err(HandlerError::invalid_argument(format!(
            "signal {signal} is not a valid signal number (1-64)"
        )))
    }
}

/// A terminal size, 1-65535 columns and rows.
pub fn terminal_size(width: u32, height: u32) -> HandlerResult<(u16, u16)> {
    match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(HandlerError::invalid_argument(format!(
            "terminal size {width}x{height} is out of range (1-65535 each)"
        ))),
    }
}

/// An exec request's exec id and command; returns its initial terminal
/// size (`None`: no terminal, or no size given).
pub fn exec_request(req: &ExecRequest) -> HandlerResult<Option<(u16, u16)>> {
    id("exec id", &req.exec_id)?;
    if req.cmd.is_empty() {
        return Err(HandlerError::invalid_argument(format!(
            "exec in container {}: empty command",
            req.container_id
        )));
    }
    let terminal = req.stdio.as_ref().is_some_and(|s| s.terminal);
    if terminal && (req.width > 0 || req.height > 0) {
        terminal_size(req.width, req.height).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::types::Stdio;

    #[test]
    fn bad_ids_sizes_and_signals_are_refused() {
        id("x", "abc-DEF_1.2").unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"a".repeat(129)] {
            assert_eq!(
                id("x", bad).unwrap_err().kind,
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert_eq!(terminal_size(80, 24).unwrap(), (80, 24));
        assert!(terminal_size(0, 24).is_err() && terminal_size(80, 70000).is_err());
        assert_eq!(signal(9).unwrap(), 9);
        assert!(signal(0).is_err() && signal(65).is_err());
    }

    #[test]
    fn exec_requests_need_an_id_a_command_and_a_sane_size() {
        let mut req = ExecRequest {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            cmd: vec!["sh".into()],
            stdio: Some(Stdio {
                terminal: true,
                ..Default::default()
            }),
            width: 80,
            height: 24,
            ..Default::default()
        };
        assert_eq!(exec_request(&req).unwrap(), Some((80, 24)));
        req.width = 0;
        req.height = 0;
        assert_eq!(exec_request(&req).unwrap(), None);
        req.width = 70_000;
        assert!(exec_request(&req).is_err());
        req.width = 0;
        req.cmd.clear();
        let err = exec_request(&req).unwrap_err();
        assert!(err.message.contains("empty command"), "{err}");
        req.cmd = vec!["sh".into()];
        req.exec_id = "../x".into();
        assert_eq!(
            exec_request(&req).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
