//! Results on disk: directories and files made with fixed modes (never world-writable,
//! whatever the caller's umask), whole files written through a temporary file and a
//! rename, a lock per results directory, and what to do when the disk says no.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

/// Results files: the owner writes, everyone reads. The umask can only take bits away.
pub const FILE_MODE: u32 = 0o644;
/// Results directories.
pub const DIR_MODE: u32 = 0o755;

/// The lock file of a results directory (see [`DirLock`]).
pub const LOCK_FILE: &str = ".migtrace.lock";

/// What to do about an I/O error on a results path: appended to its message.
pub fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            " (the file system is full: free space there or choose a directory on a larger one; records already \
             written are intact and `migtrace run` resumes where it stopped)"
        }
        Some(libc::EROFS) => " (the file system is read-only: remount it read-write or choose another directory)",
        Some(libc::EACCES | libc::EPERM) => {
            " (permission denied: run migtrace as a user that may write there, or choose another directory)"
        }
        _ => "",
    }
}

/// Creates `dir` and its parents with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for appending, created with [`FILE_MODE`].
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over
/// `path`: readers see the old file or the new one, never a torn one. On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Checks that `dir` takes a small file now (exists or can be made, writable, not full),
/// before anything long starts.
pub fn check_writable(dir: &Path) -> io::Result<()> {
    create_dir(dir)?;
    let probe = dir.join(format!(".migtrace-write-check.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&probe)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&probe);
    written
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by migtrace pid {pid} (another run of the same experiment or into the same directory): \
         wait for it to finish, or stop it (`kill -INT {pid}`); a lock of a process that died is released by the \
         kernel"
    )]
    Held { dir: PathBuf, pid: u32 },
    #[error("{dir} is in use by another process (its lock {lock} is held): wait for it to finish, or stop it")]
    HeldUnknown { dir: PathBuf, lock: PathBuf },
    #[error("locking {path}: {source}{}", hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on a results directory, held while this value lives: two runs never
/// write into one directory. `flock(2)` on [`LOCK_FILE`] inside it, which holds the
/// holder's pid; the kernel releases it when the holder exits, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (created if needed), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let err = |source| LockError::Io { path: path.clone(), source };
        create_dir(dir).map_err(err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err(e));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(match text.trim().parse::<u32>() {
                Ok(pid) => LockError::Held { dir: dir.to_owned(), pid },
                Err(_) => LockError::HeldUnknown { dir: dir.to_owned(), lock: path },
            });
        }
        let wrote = (|| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        })();
        wrote.map_err(err)?;
        Ok(Self { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("migtrace-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = temp("lock");
        let held = DirLock::acquire(&dir).expect("first lock");
        // flock conflicts between open file descriptions, also within one process.
        let refused = DirLock::acquire(&dir).expect_err("second lock refused");
        let message = refused.to_string();
        assert!(matches!(refused, LockError::Held { pid, .. } if pid == std::process::id()), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())) && message.contains("kill -INT"), "{message}");
        drop(held);
        DirLock::acquire(&dir).expect("free again");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn files_and_directories_are_never_world_writable_whatever_the_umask() {
        let dir = temp("modes");
        // SAFETY: umask is process-wide; this test restores it, and the modes it checks
        // are the ones set explicitly, which the other tests do not depend on.
        let old = unsafe { libc::umask(0) };
        create_dir(&dir.join("sub")).expect("dir");
        write_atomic(&dir.join("sub/summary.json"), b"{}").expect("write");
        let mut f = open_append(&dir.join("sub/migrations.jsonl")).expect("open");
        f.write_all(b"{}\n").expect("append");
        let lock = DirLock::acquire(&dir.join("sub")).expect("lock");
        // SAFETY: restoring the umask read above.
        unsafe { libc::umask(old) };
        for p in ["sub", "sub/summary.json", "sub/migrations.jsonl", &format!("sub/{LOCK_FILE}")] {
            let mode = fs::metadata(dir.join(p)).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode & 0o022, 0, "{p} is group- or world-writable: {mode:o}");
        }
        drop(lock);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_failed_atomic_write_leaves_the_old_file_and_no_temporary() {
        let dir = temp("atomic");
        create_dir(&dir).expect("dir");
        let path = dir.join("summary.json");
        write_atomic(&path, b"old").expect("write");
        // A directory where the file should go makes the rename fail.
        let blocked = dir.join("blocked");
        create_dir(&blocked).expect("dir");
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).expect("read"), b"old");
        let names: Vec<String> =
            fs::read_dir(&dir).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "temporary left: {names:?}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(hint(&io::Error::from_raw_os_error(libc::ENOSPC)).contains("full"));
        assert!(hint(&io::Error::from_raw_os_error(libc::EROFS)).contains("read-only"));
        assert!(hint(&io::Error::from_raw_os_error(libc::EACCES)).contains("permission"));
        assert_eq!(hint(&io::Error::from_raw_os_error(libc::EIO)), "");
    }
}
