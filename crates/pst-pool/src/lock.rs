//! One process at a time: the exclusive lock every opener of a pool file holds.
//!
//! A pool belongs to one process. Two openers would lend the same buffers to two kernels and
//! append to one log from two heads, silently losing acknowledged writes. So every open takes a
//! BSD `flock` on the pool file itself, held by the [`Pool`](crate::pool::Pool)'s `File` for as long
//! as the pool is open: exclusive for a writer, shared for a read-only opener (`pst inspect`).
//! A read-only opener is therefore refused while a writer runs (it would read a log that is
//! being appended to), and a writer is refused while anyone holds the pool.
//!
//! `flock` rather than `fcntl` record locks: a `flock` belongs to the open file description, so
//! a second open *in the same process* conflicts too (POSIX record locks are per process and
//! would let a library user open one pool twice), and the kernel drops it when the holder dies,
//! however it dies — there is no stale lock file to clean up after `kill -9`. The holder's pid,
//! for the message, comes from `/proc/locks`, which lists every `flock` with the pid that took
//! it and the inode it is on.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

/// Who holds a pool, as far as `/proc/locks` and `/proc/<pid>` tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id of the process that took the lock.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), if it is still readable.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Some(c) => write!(f, "pid {} ({c})", self.pid),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another open file description holds a conflicting lock.
    Busy(Option<Holder>),
    /// `flock` itself failed.
    Io(io::Error),
}

/// How long to wait for a lock whose holder is already dead (its process is exiting, or is a
/// zombie whose files the kernel is still releasing) before calling the pool busy.
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(5);

/// How long to retry any conflicting lock before calling the pool busy. A `flock` belongs to
/// the open file description, which a `fork` in another thread duplicates until the child's
/// `exec` closes it (`O_CLOEXEC`): for that moment the pool just closed by this process still
/// looks held. A real second holder is refused after this short wait.
const FORK_GRACE: Duration = Duration::from_millis(200);

/// Take the pool lock on `file`: exclusive, or shared when `shared`. Retries a conflict for
/// [`FORK_GRACE`], and for up to [`DEAD_HOLDER_GRACE`] when the holder is gone but its files
/// are not yet released.
pub(crate) fn lock(file: &File, shared: bool) -> Result<(), LockError> {
    let op = if shared {
        FlockOperation::NonBlockingLockShared
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    let start = Instant::now();
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let holder = holder(file);
                // Wait only for a holder known to be on its way out. One that cannot be named
                // (another pid namespace, `hidepid`, a filesystem whose device number differs
                // from the one `/proc/locks` prints) is taken to be alive: refuse at once.
                let dying = holder.as_ref().is_some_and(|h| !is_alive(h.pid));
                let grace = if dying { DEAD_HOLDER_GRACE } else { FORK_GRACE };
                if start.elapsed() >= grace {
                    return Err(LockError::Busy(holder));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(e) => return Err(LockError::Io(e.into())),
        }
    }
}

/// The process holding a `flock` on `file`'s inode, from `/proc/locks` (a line per lock:
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:56789 0 EOF`, device as `major:minor` in hex).
fn holder(file: &File) -> Option<Holder> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = find_holder(&locks, &want)?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned());
    Some(Holder { pid, command })
}

/// The pid of the first `FLOCK` line in `locks` on the inode `dev_ino` (`mm:nn:inode`).
fn find_holder(locks: &str, dev_ino: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        // Blocked waiters are listed as `1: -> FLOCK ...`; they hold nothing.
        let mut f = line.split_whitespace().skip(1);
        if f.next()? != "FLOCK" {
            return None;
        }
        let pid = f.nth(2)?.parse().ok()?;
        (f.next()? == dev_ino).then_some(pid)
    })
}

/// Whether `pid` names a process that is not exiting: a zombie (`Z`) or dead (`X`) process has
/// run its last code, and its locks are on their way out.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')', as comm may contain anything.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks_lines() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:56789 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 fd:01:56789 0 EOF\n";
        assert_eq!(find_holder(locks, "fd:01:56789"), Some(4242));
        assert_eq!(
            find_holder(locks, "08:01:77"),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(find_holder(locks, "fd:01:1"), None);
    }

    #[test]
    fn second_description_conflicts_in_one_process() {
        let dir = std::env::temp_dir().join(format!("pst-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"x").unwrap();
        let a = File::open(&path).unwrap();
        let b = File::open(&path).unwrap();
        lock(&a, false).unwrap();
        match lock(&b, true) {
            Err(LockError::Busy(Some(h))) => assert_eq!(h.pid, std::process::id()),
            other => panic!("expected busy with our pid, got {other:?}"),
        }
        drop(a);
        lock(&b, true).unwrap();
        let c = File::open(&path).unwrap();
        lock(&c, true).expect("shared locks coexist");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
