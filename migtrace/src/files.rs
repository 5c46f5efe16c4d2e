//! Results on disk: directories and files made with fixed modes (never world-writable,
//! whatever the caller's umask), whole files written through a temporary file and a
//! rename, a lock per results directory, and what to do when the disk says no.
//!
//! migtrace runs as root, and a results directory may be writable by others: nothing
//! here follows a symbolic link at a file's name (`O_NOFOLLOW`; temporary files are
//! made with `O_EXCL` under random names), so no one can aim root's writes at another
//! file.

use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
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

/// What stands at a results path that migtrace will not write through. Its message
/// follows the path in the errors that carry it.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "a symbolic link (to {}): migtrace does not write through links in a results directory, where another \
         user could aim one at any file; remove the link or choose another directory",
        .0.display()
    )]
    Symlink(PathBuf),
    #[error(
        "a symbolic link (to {}) made by uid {uid}, not by migtrace's user: remove it or choose another directory",
        .target.display()
    )]
    ForeignSymlink { target: PathBuf, uid: u32 },
    #[error("not a regular file ({0}): remove it or choose another directory")]
    NotRegular(&'static str),
    #[error(
        "a file with {0} hard links: migtrace does not write to a file that is also another one; remove it or \
         choose another directory"
    )]
    HardLinks(u64),
}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> Self {
        io::Error::other(r)
    }
}

/// `Some` when `e` is one of migtrace's refusals.
pub fn refused(e: &io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Refused>())
}

fn link_target(path: &Path) -> PathBuf {
    fs::read_link(path).unwrap_or_else(|_| PathBuf::from("?"))
}

/// An open that failed on a symbolic link (`O_NOFOLLOW` says ELOOP) says so by name.
fn no_symlink(path: &Path, e: io::Error) -> io::Error {
    match fs::symlink_metadata(path) {
        Ok(m) if e.raw_os_error() == Some(libc::ELOOP) && m.file_type().is_symlink() => {
            Refused::Symlink(link_target(path)).into()
        }
        _ => e,
    }
}

/// Refuses a symbolic link at `path` (a file migtrace is about to read and then write).
pub fn refuse_link(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Refused::Symlink(link_target(path)).into()),
        _ => Ok(()),
    }
}

/// A results file opened for writing must be a plain file of its own: not a fifo or a
/// device, not a second name of another file.
fn plain(file: File) -> io::Result<File> {
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(Refused::NotRegular(if kind.is_dir() { "a directory" } else { "a fifo, socket or device" }).into());
    }
    if meta.nlink() > 1 {
        return Err(Refused::HardLinks(meta.nlink()).into());
    }
    Ok(file)
}

/// Opening options for a results file that never follow a link at its name.
fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Creates `dir` and its parents with [`DIR_MODE`]. A symbolic link at `dir` itself is
/// followed only when migtrace's own user made it (yours, to put results elsewhere).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() && meta.uid() != me {
        return Err(Refused::ForeignSymlink { target: link_target(dir), uid: meta.uid() }.into());
    }
    Ok(())
}

/// Opens `path` for appending (and reading), created with [`FILE_MODE`]; a link at
/// `path`, a non-file or a file with other names is refused.
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = no_follow().read(true).append(true).create(true).open(path).map_err(|e| no_symlink(path, e))?;
    plain(file)
}

/// Writes `bytes` to a temporary file beside `path` (made anew under a random name),
/// syncs it and renames it over `path`: readers see the old file or the new one, never
/// a torn one. On failure the temporary file is removed and `path` is untouched. A
/// link at `path` is refused (the rename would replace the link, not write through it,
/// but a link there is not what migtrace made).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    refuse_link(path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The pid in the name tells a stale temporary from a live one (see experiment::store).
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp.{}.", std::process::id()))
        .permissions(Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Checks that `dir` takes a small file now (exists or can be made, writable, not full),
/// before anything long starts. The probe is an unnamed file (or one under a random
/// name, removed at once).
pub fn check_writable(dir: &Path) -> io::Result<()> {
    create_dir(dir)?;
    let mut f = tempfile::tempfile_in(dir)?;
    f.write_all(&[0u8; 4096])?;
    f.sync_all()
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
        let file = no_follow()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(no_symlink(&path, e)))?;
        let mut file = plain(file).map_err(err)?;
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

    /// A results directory with `name` a symbolic link to a file outside it that holds
    /// "precious"; returns (dir, the link, the file).
    fn linked(tag: &str, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = temp(tag);
        create_dir(&dir).expect("dir");
        let victim = dir.with_extension("victim");
        fs::write(&victim, b"precious").expect("victim");
        let link = dir.join(name);
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        (dir, link, victim)
    }

    fn assert_refused_link(e: &io::Error, victim: &Path) {
        assert!(matches!(refused(e), Some(Refused::Symlink(t)) if t == victim), "not refused as a link: {e:?}");
        assert_eq!(fs::read(victim).expect("victim"), b"precious", "the link's target was written");
    }

    #[test]
    fn a_link_at_the_records_file_or_the_lock_is_refused_and_its_target_untouched() {
        let (dir, link, victim) = linked("link-records", crate::measure::record::RECORDS_FILE);
        let e = open_append(&link).expect_err("a link is not opened");
        assert_refused_link(&e, &victim);
        // Through the records writer, the message names the link and the fix.
        let message = crate::measure::record::RecordWriter::open(&dir).err().expect("refused").to_string();
        assert!(message.starts_with(&format!("{}: a symbolic link", link.display())), "{message}");
        assert!(message.contains("remove the link") && !message.contains('\n'), "{message}");
        fs::remove_dir_all(&dir).expect("cleanup");
        fs::remove_file(victim).expect("cleanup");

        let (dir, link, victim) = linked("link-lock", LOCK_FILE);
        let e = DirLock::acquire(&dir).expect_err("a linked lock is refused");
        let message = e.to_string();
        assert!(message.contains(&format!("{}: a symbolic link", link.display())), "{message}");
        let LockError::Io { source, .. } = e else { panic!("{message}") };
        assert_refused_link(&source, &victim);
        fs::remove_dir_all(&dir).expect("cleanup");
        let _ = fs::remove_file(victim);
    }

    #[test]
    fn a_link_at_a_whole_file_is_refused_and_its_target_untouched() {
        let (dir, link, victim) = linked("link-atomic", "summary.json");
        let e = write_atomic(&link, b"{}").expect_err("refused");
        assert_refused_link(&e, &victim);
        assert!(fs::symlink_metadata(&link).expect("lstat").file_type().is_symlink(), "the link was replaced");
        fs::remove_dir_all(&dir).expect("cleanup");
        let _ = fs::remove_file(victim);
    }

    #[test]
    fn temporary_and_probe_files_at_guessable_names_are_never_written_through() {
        // The names earlier versions used, `.<name>.tmp.<pid>` and
        // `.migtrace-write-check.<pid>`, planted as links to another file.
        let pid = std::process::id();
        let (dir, _, victim) = linked("link-tmp", &format!(".summary.json.tmp.{pid}"));
        std::os::unix::fs::symlink(&victim, dir.join(format!(".migtrace-write-check.{pid}"))).expect("symlink");
        write_atomic(&dir.join("summary.json"), b"{}").expect("written beside the links");
        check_writable(&dir).expect("checked beside the links");
        assert_eq!(fs::read(dir.join("summary.json")).expect("read"), b"{}");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious", "written through a planted link");
        fs::remove_dir_all(&dir).expect("cleanup");
        let _ = fs::remove_file(victim);
    }

    #[test]
    fn a_records_file_with_another_name_or_not_a_file_is_refused() {
        let dir = temp("hardlink");
        create_dir(&dir).expect("dir");
        let victim = dir.join("other");
        fs::write(&victim, b"precious").expect("victim");
        let path = dir.join("migrations.jsonl");
        fs::hard_link(&victim, &path).expect("hard link");
        let e = open_append(&path).expect_err("refused");
        assert!(matches!(refused(&e), Some(Refused::HardLinks(2))), "{e:?}");
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("a directory in its place");
        assert!(open_append(&path).is_err());
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    #[ignore = "root: hands a link to another user (run `cargo xtask test`)"]
    fn a_results_directory_linked_by_another_user_is_refused_and_ones_own_link_followed() {
        let dir = temp("dirlink");
        create_dir(&dir).expect("dir");
        let elsewhere = dir.join("elsewhere");
        create_dir(&elsewhere).expect("dir");
        let mine = dir.join("mine");
        std::os::unix::fs::symlink(&elsewhere, &mine).expect("symlink");
        create_dir(&mine).expect("one's own link is followed");
        let theirs = dir.join("theirs");
        std::os::unix::fs::symlink(&elsewhere, &theirs).expect("symlink");
        std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).expect("lchown");
        let e = create_dir(&theirs).expect_err("refused");
        assert!(matches!(refused(&e), Some(Refused::ForeignSymlink { uid: 65534, .. })), "{e:?}");
        let e = DirLock::acquire(&theirs).expect_err("no lock taken through it");
        assert!(e.to_string().contains("made by uid 65534"), "{e}");
        assert!(!elsewhere.join(LOCK_FILE).exists(), "a lock was made through another user's link");
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
