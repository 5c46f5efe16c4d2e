//! Root's private state on the host: directories 0700 and files 0600 whatever the
//! umask, under a directory no one else made. The labs keep QMP sockets here, and
//! anyone who can reach a root QEMU's monitor can run commands as root (`migrate
//! "exec:…"`, `human-monitor-command`).

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// A path that is not migtrace's to trust. Its message follows the path in the errors
/// that carry it.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error(
        "belongs to uid {uid}, not to migtrace's user: someone else made it first, so nothing in it can be trusted; \
         remove it (`rm -r {}`) and run again",
        .path.display()
    )]
    Owner { path: PathBuf, uid: u32 },
    #[error("is not a directory (a symbolic link or a file): remove it and run again")]
    NotDirectory,
}

/// Makes `path` a directory only its owner can enter (0700), or checks that the one
/// already there is migtrace's user's own and tightens its mode. The parent must exist.
pub fn dir(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(Untrusted::NotDirectory));
    }
    // SAFETY: geteuid has no failure mode.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(io::Error::other(Untrusted::Owner { path: path.to_owned(), uid: meta.uid() }));
    }
    // An older migtrace, or the umask, may have left it open to others.
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` for writing, 0600, never through a link at its name.
pub fn file(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Opens `path` for appending, created 0600, never through a link at its name.
pub fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Replaces `path` with `bytes` at once (a temporary file, 0600, renamed over it):
/// readers see the old content or the new.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("migtrace-private-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_the_owners_alone_whatever_the_umask() {
        let root = temp("modes");
        // SAFETY: umask is process-wide; restored below, and the modes checked are the
        // ones set explicitly, which other tests do not depend on.
        let old = unsafe { libc::umask(0) };
        let made = (|| {
            dir(&root)?;
            dir(&root.join("sub"))?;
            file(&root.join("sub/log"))?.write_all(b"x")?;
            append(&root.join("sub/console"))?.write_all(b"x")?;
            write(&root.join("sub/state.json"), b"{}")
        })();
        // SAFETY: restoring the umask read above.
        unsafe { libc::umask(old) };
        made.expect("made");
        assert_eq!((mode(&root), mode(&root.join("sub"))), (0o700, 0o700));
        for f in ["log", "console", "state.json"] {
            assert_eq!(mode(&root.join("sub").join(f)), 0o600, "{f}");
        }
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn an_open_directory_of_ones_own_is_closed_and_a_link_or_file_refused() {
        let root = temp("existing");
        fs::create_dir(&root).expect("dir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).expect("chmod");
        dir(&root).expect("own directory");
        assert_eq!(mode(&root), 0o700);
        let elsewhere = root.join("elsewhere");
        fs::create_dir(&elsewhere).expect("dir");
        let link = root.join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
        let e = dir(&link).expect_err("a link is refused");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        fs::write(root.join("file"), b"").expect("file");
        assert!(dir(&root.join("file")).is_err());
        std::os::unix::fs::symlink(root.join("file"), root.join("file-link")).expect("symlink");
        assert!(file(&root.join("file-link")).is_err(), "a file is opened through a link");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    #[ignore = "root: makes a directory another user owns (run `cargo xtask test`)"]
    fn a_directory_another_user_made_first_is_refused() {
        let root = temp("foreign");
        fs::create_dir(&root).expect("dir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).expect("chmod");
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).expect("chown");
        let e = dir(&root).expect_err("refused");
        let message = e.to_string();
        assert!(message.contains("belongs to uid 65534") && message.contains("rm -r"), "{message}");
        assert_eq!(mode(&root), 0o777, "another user's directory was changed, not refused");
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
