//! Child reaping for the agent, which runs as PID 1 (or a subreaper): every
//! process that dies in the guest ends up as our child, including container
//! processes whose parent (`runc`) exited long ago.
//!
//! One loop calls `waitpid(-1)` on SIGCHLD and hands each status to whoever
//! registered interest in that pid. Because a process can exit before its pid
//! is registered (an exec'd process that finishes at once), statuses nobody
//! asked for yet are kept and handed out on registration. Spawning happens
//! under the same lock as dispatch, so a child we start can never be reaped
//! before its waiter exists.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Exit status as a shell reports it: the exit code, or 128 + signal.
pub type ExitCode = i32;

/// Receives `Some(status)` once the process is reaped.
pub type ExitWatch = watch::Receiver<Option<ExitCode>>;

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, watch::Sender<Option<ExitCode>>>,
    /// Exits reaped before anyone registered (bounded; oldest dropped first).
    unclaimed: HashMap<i32, ExitCode>,
    unclaimed_order: std::collections::VecDeque<i32>,
}

const MAX_UNCLAIMED: usize = 4096;

#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent
        // in a way that matters more than losing the agent, so keep going.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and returns its pid and exit watch. The caller must not
    /// wait for the child itself.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(u32, ExitWatch)> {
        let mut t = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id();
        // Dropping `Child` neither kills nor waits; the reaper owns the wait.
        drop(child);
        Ok((pid, Self::register(&mut t, pid as i32)))
    }

    /// Watches a pid we did not spawn directly (a container process that was
    /// re-parented to us).
    pub fn watch(&self, pid: u32) -> ExitWatch {
        let mut t = self.lock();
        Self::register(&mut t, pid as i32)
    }

    fn register(t: &mut Table, pid: i32) -> ExitWatch {
        if let Some(code) = t.unclaimed.remove(&pid) {
            t.unclaimed_order.retain(|p| *p != pid);
            let (_tx, rx) = watch::channel(Some(code));
            return rx;
        }
        if let Some(tx) = t.waiters.get(&pid) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        t.waiters.insert(pid, tx);
        rx
    }

    /// Reaps everything that has exited so far.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.deliver(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.deliver(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn deliver(&self, pid: i32, code: ExitCode) {
        tracing::debug!(pid, code, "reaped");
        let mut t = self.lock();
        if let Some(tx) = t.waiters.remove(&pid) {
            tx.send_replace(Some(code));
        } else {
            t.unclaimed.insert(pid, code);
            t.unclaimed_order.push_back(pid);
            if t.unclaimed_order.len() > MAX_UNCLAIMED
                && let Some(old) = t.unclaimed_order.pop_front()
            {
                t.unclaimed.remove(&old);
            }
        }
    }

    /// Runs the SIGCHLD loop forever.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        loop {
            self.reap_all();
            // SIGCHLD coalesces; also poll now and then so nothing lingers.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sig.recv()).await;
        }
    }
}

/// Waits for an exit watch to report.
pub async fn wait(mut w: ExitWatch) -> ExitCode {
    loop {
        if let Some(code) = *w.borrow_and_update() {
            return code;
        }
        if w.changed().await.is_err() {
            // Sender dropped without a value: only if the table was cleared.
            return (*w.borrow()).unwrap_or(255);
        }
    }
}

/// Runs `cmd` to completion under the reaper (never use `std`/`tokio`
/// process waiting in the agent: the reaper would steal the status) and
/// returns its exit code and combined stdout+stderr.
pub async fn output(reaper: &Reaper, mut cmd: Command) -> std::io::Result<(ExitCode, String)> {
    use std::io::Read;
    use std::process::Stdio;
    let (rd, wr) = crate::stdio::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(wr.try_clone()?))
        .stderr(Stdio::from(wr));
    let (_pid, exit) = reaper.spawn(&mut cmd)?;
    // Our copies of the write end live in `cmd`; drop them so EOF arrives.
    drop(cmd);
    let text = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut s);
        s
    })
    .await
    .unwrap_or_default();
    Ok((wait(exit).await, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_signals_and_early_exits_reach_waiters() {
        let reaper = Reaper::default();
        tokio::spawn(reaper.clone().run());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let (_, exit) = reaper.spawn(&mut cmd).expect("spawn");
        assert_eq!(wait(exit).await, 3);

        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let (pid, exit) = reaper.spawn(&mut cmd).expect("spawn");
        nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        assert_eq!(wait(exit).await, 137);

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let (code, text) = output(&reaper, cmd).await.expect("output");
        assert_eq!((code, text.as_str()), (0, "out\nerr\n"));

        // An exit reaped before anyone registered is kept for the watcher.
        // (One test: a second reaper in this process would steal exits.)
        let child = Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        drop(child);
        // Reap until the exit is recorded as unclaimed, then register.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !reaper.lock().unclaimed.contains_key(&(pid as i32)) {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never reaped"
            );
            reaper.reap_all();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(wait(reaper.watch(pid)).await, 0);
    }
}
