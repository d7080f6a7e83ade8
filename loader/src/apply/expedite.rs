//! Expedited RCU grace periods around a bulk TCX attach. Each TCX link
//! creation waits for an RCU grace period while holding RTNL, so a thousand
//! of them take tens of seconds; with `/sys/kernel/rcu_expedited` = 1 the
//! same attachments take a fraction of a second (BENCHMARKS.md). The switch
//! is host-wide, so cgacct turns it on only for the duration of an
//! `execute` that makes at least [`BULK`] TCX attachments (or a `destroy`
//! that removes as many: the kernel detaches each one, after its pin goes,
//! in a work item that waits for a grace period too), only when the
//! layout allows (`[tc] expedite_rcu`, default true), and puts the previous
//! value back on every exit path:
//!
//! - returning, with or without an error: [`Window`]'s Drop;
//! - SIGINT, SIGTERM, SIGHUP: held off while the window is open; the
//!   actions stop, the value is restored, then the signal is raised again;
//! - SIGKILL or a crash: before the change, the value to restore and the
//!   process (pid and start time, not a name) are recorded in
//!   `/run/cgacct/rcu_expedited.json`; the next apply, destroy or watch
//!   ([`recover`]) restores it once no recorded process is alive.
//!
//! Runs that overlap (two roots, or watch and apply) share the record under
//! a lock (`rcu_expedited.lock`): the first one records the previous value,
//! the last one to finish restores it. A value someone else changed while
//! a run had it on is left as it is.
use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    observe::runtime::memory,
    sys::{self, os::RCU_EXPEDITED, signals},
};

/// TCX attachments in one `execute` from which grace periods are expedited.
pub const BULK: usize = 8;

/// A process, named by pid and start time (clock ticks after boot), so that
/// a recycled pid is not taken for the process that recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    start: u64,
}

impl Holder {
    fn me() -> Result<Holder> {
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| anyhow!("reading /proc/{pid}/stat"))?;
        Ok(Holder { pid, start })
    }

    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of `/proc/<pid>/stat`, the process's start time; None when
/// there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What `rcu_expedited.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The value before the first of the holders turned it on.
    previous: bool,
    /// The runs that have it on.
    holders: Vec<Holder>,
}

fn record_path() -> PathBuf {
    memory::state_dir().join("rcu_expedited.json")
}

/// The record, under the lock file held for as long as the value lives.
struct Locked {
    _lock: fs::File,
    path: PathBuf,
}

impl Locked {
    fn take() -> Result<Locked> {
        let dir = memory::state_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = dir.join("rcu_expedited.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        sys::os::lock_exclusive(&lock).with_context(|| format!("locking {}", lock_path.display()))?;
        Ok(Locked {
            _lock: lock,
            path: record_path(),
        })
    }

    /// The record; None when there is none. A record that cannot be read
    /// is an error: the value to restore is unknown.
    fn read(&self) -> Result<Option<Record>> {
        match fs::read(&self.path) {
            Ok(t) => serde_json::from_slice(&t)
                .map(Some)
                .with_context(|| format!("{} is corrupt: remove it", self.path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    fn write(&self, r: &Record) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let result = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(r)?)?;
            f.sync_data()?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing {}", self.path.display()))
    }

    /// Drops the holders in `gone` and those no longer alive; when none is
    /// left, restores the previous value and removes the record. Returns
    /// the value restored, if one was.
    fn release(&self, gone: Option<Holder>) -> Result<Option<bool>> {
        let Some(mut r) = self.read()? else {
            return Ok(None);
        };
        r.holders.retain(|h| Some(*h) != gone && h.alive());
        if !r.holders.is_empty() {
            self.write(&r)?;
            return Ok(None);
        }
        let path = Path::new(RCU_EXPEDITED);
        // On, as the holders left it: put the previous value back. Anything
        // else was changed by someone else since: theirs to keep.
        let restored = if sys::os::read_switch(path)? && !r.previous {
            sys::os::write_switch(path, r.previous)
                .with_context(|| format!("restoring {RCU_EXPEDITED} to 0"))?;
            Some(r.previous)
        } else {
            None
        };
        fs::remove_file(&self.path).with_context(|| format!("removing {}", self.path.display()))?;
        Ok(restored)
    }
}

/// Restores what a run killed while it held the switch on left behind,
/// when no run that recorded it is still alive. Returns a line to print
/// when it did.
pub fn recover() -> Result<Option<String>> {
    if !record_path().exists() {
        return Ok(None);
    }
    let locked = Locked::take()?;
    let holders = locked.read()?.map(|r| r.holders).unwrap_or_default();
    Ok(locked.release(None)?.map(|v| {
        let pids: Vec<String> = holders.iter().map(|h| h.pid.to_string()).collect();
        format!(
            "restored {RCU_EXPEDITED} to {} (left at 1 by cgacct-pin pid {}, which did not finish)",
            u8::from(v),
            pids.join(", ")
        )
    }))
}

/// An open window: grace periods are expedited until it drops.
pub struct Window {
    me: Holder,
    signals: Option<signals::Saved>,
}

impl Window {
    /// Turns expedited grace periods on for `count` TCX `what`
    /// ("attachments", "detachments"), recording first what to restore.
    /// None when the switch was on already (nothing to restore) or is
    /// missing (a kernel without it).
    pub fn open(count: usize, what: &str) -> Result<Option<(Window, String)>> {
        let path = Path::new(RCU_EXPEDITED);
        if !path.exists() {
            return Ok(None);
        }
        let me = Holder::me()?;
        let locked = Locked::take()?;
        // A killed run's record, restored first if it is the only one.
        locked.release(None)?;
        let mut r = match locked.read()? {
            Some(r) => r,
            None if sys::os::read_switch(path)? => return Ok(None),
            None => Record::default(),
        };
        r.holders.push(me);
        locked.write(&r)?;
        let signals = signals::catch_stop_signals().ok();
        sys::fault::step();
        if let Err(e) = sys::os::write_switch(path, true) {
            let _ = locked.release(Some(me));
            if let Some(s) = signals {
                signals::restore(s);
            }
            return Err(e).with_context(|| format!("writing 1 to {RCU_EXPEDITED}"));
        }
        // Released before the window can drop: its Drop takes the lock again.
        drop(locked);
        sys::fault::point("rcu-expedited");
        Ok(Some((
            Window { me, signals },
            format!(
                "expediting RCU grace periods for {count} TCX {what}: {RCU_EXPEDITED} = 1 until \
                 they are done, then {} again ([tc] expedite_rcu = false turns this off)",
                u8::from(r.previous)
            ),
        )))
    }

    /// Whether a stop signal came: the caller stops at once.
    pub fn interrupted() -> Option<i32> {
        signals::caught()
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let released = Locked::take().and_then(|l| l.release(Some(self.me)));
        if let Err(e) = released {
            eprintln!(
                "cgacct-pin: warning: restoring {RCU_EXPEDITED}: {e:#} (the next apply, destroy or \
                 watch tries again)"
            );
        }
        if let Some(s) = self.signals.take() {
            signals::restore(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_its_pid_and_start_time() {
        let me = Holder::me().expect("own /proc entry");
        assert!(me.alive());
        let recycled = Holder {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!recycled.alive(), "same pid, another start: another process");
        let text = serde_json::to_string(&Record {
            previous: false,
            holders: vec![me],
        })
        .expect("json");
        let back: Record = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.holders, vec![me]);
    }
}
