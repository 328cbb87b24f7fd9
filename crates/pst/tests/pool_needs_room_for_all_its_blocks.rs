//! A pool is allocated in full before it is mapped. On a filesystem without room for it, the
//! open is refused with `PoolError::NoSpace` — a new pool leaves nothing behind, an existing
//! sparse one is left byte-for-byte intact — instead of the process dying of `SIGBUS` at the
//! first page the filesystem cannot give (which is what a sparse pool did on a full disk).
//!
//! The small filesystem is a 4 MiB tmpfs mounted for the test; it needs root (CI runs as
//! root). Without the mount the test says so and checks only the allocation of a pool that
//! fits.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pst::{Geometry, Pool, PoolError, PoolOptions};

mod common;

fn opts(size: u64) -> PoolOptions {
    PoolOptions {
        geometry: Geometry::for_size(size, 2048).unwrap(),
        ..PoolOptions::default()
    }
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(name: &str, mib: u32) -> Option<SmallFs> {
        let dir = common::tmp_pool(name).with_file_name("fs");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs (not root?): the no-room cases are not run");
            return None;
        }
        Some(SmallFs(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A pool of `o` made in test directory `name`, then copied sparsely (its zero buffers left as
/// holes) onto `fs`; returns the copy's path.
fn sparse_pool_on(fs: &SmallFs, name: &str, o: &PoolOptions) -> PathBuf {
    let src = common::tmp_pool(name);
    drop(Pool::open(&src, o).unwrap());
    let p = fs.path().join("pool");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&p)
        .status()
        .unwrap();
    assert!(cp.success());
    p
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn a_pool_that_fits_is_allocated_in_full() {
    let p = common::tmp_pool("alloc-fits");
    let o = opts(8 << 20);
    let pool = Pool::open(&p, &o).unwrap();
    let len = std::fs::metadata(&p).unwrap().len();
    assert!(
        allocated(&p) >= len,
        "{} of {len} bytes allocated",
        allocated(&p)
    );
    drop(pool);
}

#[test]
fn a_new_pool_too_big_for_its_filesystem_is_refused_and_nothing_is_left() {
    let Some(fs) = SmallFs::mount("alloc-new", 4) else {
        return;
    };
    let p = fs.path().join("pool");
    let err = Pool::open(&p, &opts(16 << 20)).unwrap_err();
    assert!(matches!(err, PoolError::NoSpace { new: true, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no room") && msg.contains("nothing was created"),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(fs.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // A pool that fits opens, and serves every one of its pages.
    let pool = Pool::open(&p, &opts(2 << 20)).unwrap();
    assert!(allocated(&p) >= std::fs::metadata(&p).unwrap().len());
    drop(pool);
}

#[test]
fn an_existing_sparse_pool_without_room_is_refused_untouched() {
    let Some(fs) = SmallFs::mount("alloc-sparse", 4) else {
        return;
    };
    // A 16 MiB pool made elsewhere, then copied sparsely onto the small filesystem: its
    // header fits, its buffers do not.
    let o = opts(16 << 20);
    let p = sparse_pool_on(&fs, "alloc-sparse-src", &o);
    let before = std::fs::read(&p).unwrap();
    let err = Pool::open(&p, &o).unwrap_err();
    assert!(
        matches!(err, PoolError::NoSpace { new: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

/// A creation killed mid-way leaves its temp file (`pool.tmp.…`), which holds the pool's whole
/// length on disk. The next opener removes it: its creator's `flock` died with the creator. A
/// temp file whose creator is still at work (its lock held) stays, as do other files.
#[test]
fn temp_files_of_interrupted_creations_are_removed() {
    let p = common::tmp_pool("alloc-stale-tmp");
    let dir = p.parent().unwrap();
    let make = |name: &str| {
        let f = dir.join(name);
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(1 << 20).unwrap();
        (f, file)
    };
    let (stale, _) = make("pool.tmp.12345.5.0");
    let (busy, busy_file) = make("pool.tmp.12346.6.0");
    busy_file.try_lock().unwrap(); // flock(LOCK_EX | LOCK_NB), as a creator holds it
    let (other, _) = make("other.tmp.12345.8.0");
    drop(Pool::open(&p, &opts(2 << 20)).unwrap());
    assert!(!stale.exists(), "a temp file nobody holds is removed");
    assert!(busy.exists(), "a temp file whose creator holds it stays");
    assert!(other.exists(), "another pool's temp file stays");
    drop(busy_file);
}

/// A sparse existing pool on an ext4 filesystem without room for its holes is refused before
/// anything is allocated: the filesystem keeps its free space (a failed `fallocate` on ext4
/// keeps the blocks it got, and left the disk full before). Needs root and `mkfs.ext4`.
#[test]
fn a_refused_sparse_pool_leaves_the_free_space_as_it_was() {
    let dir = common::tmp_pool("alloc-ext4").with_file_name("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.with_file_name("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .is_ok_and(|s| s.success());
    let mounted = mkfs
        && Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot make and mount an ext4 image (not root?): not run");
        return;
    }
    let fs = SmallFs(dir.clone());
    let o = opts(32 << 20);
    let p = sparse_pool_on(&fs, "alloc-ext4-src", &o);
    let free = || free_bytes(fs.path());
    let before = (std::fs::read(&p).unwrap(), free());
    let err = Pool::open(&p, &o).unwrap_err();
    assert!(
        matches!(err, PoolError::NoSpace { new: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sparse"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before.0);
    assert_eq!(free(), before.1, "free bytes of the filesystem");
}

/// Free bytes for unprivileged users on the filesystem holding `p` (`df`'s "Avail").
fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
