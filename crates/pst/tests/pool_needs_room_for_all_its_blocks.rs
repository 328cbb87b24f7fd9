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
    let src = common::tmp_pool("alloc-sparse-src");
    let o = opts(16 << 20);
    drop(Pool::open(&src, &o).unwrap());
    let p = fs.path().join("pool");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&p)
        .status()
        .unwrap();
    assert!(cp.success());
    let before = std::fs::read(&p).unwrap();
    let err = Pool::open(&p, &o).unwrap_err();
    assert!(
        matches!(err, PoolError::NoSpace { new: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

/// A creation killed mid-way leaves its temp file (`pool.tmp.<pid>.…`), which now holds the
/// pool's whole length on disk. The next opener removes it if its process is gone and it is
/// over a minute old; a young one, or one whose process lives, stays.
#[test]
fn temp_files_of_interrupted_creations_are_removed() {
    let p = common::tmp_pool("alloc-stale-tmp");
    let dir = p.parent().unwrap();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let make = |name: String, old: bool| {
        let f = dir.join(name);
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(1 << 20).unwrap();
        if old {
            file.set_modified(hour_ago).unwrap();
        }
        f
    };
    let stale = make(format!("pool.tmp.{dead}.5.0"), true);
    let young = make(format!("pool.tmp.{dead}.6.0"), false);
    let live = make(format!("pool.tmp.{}.7.0", std::process::id()), true);
    let other = make(format!("other.tmp.{dead}.8.0"), true);
    drop(Pool::open(&p, &opts(2 << 20)).unwrap());
    assert!(
        !stale.exists(),
        "the dead creator's old temp file is removed"
    );
    assert!(young.exists() && live.exists() && other.exists());
}
