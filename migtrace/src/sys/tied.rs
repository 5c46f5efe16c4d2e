//! Children that die with migtrace however it ends (SIGKILL included): the lab's QEMUs
//! and daemons.
//!
//! `PR_SET_PDEATHSIG` sends its signal when the *thread* that forked the child exits, not
//! the process. Tokio's threads come and go: `block_in_place` hands a worker's core to a
//! new thread and sends the old one to the blocking pool, whose idle threads exit after
//! ten seconds; a QEMU forked there would be killed in the middle of an experiment. So
//! every tied child is forked by one thread that lives as long as the process.

use std::{
    io,
    os::unix::process::CommandExt as _,
    sync::{OnceLock, mpsc},
};

use tokio::process::{Child, Command};

type Job = Box<dyn FnOnce() + Send>;

/// The forking thread's queue; None if the thread could not be started.
fn forker() -> Option<&'static mpsc::Sender<Job>> {
    static FORKER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    FORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            // Never joined: it must outlive every child it forks, so it lives as long as
            // the process (it only ever waits for the next job).
            let started = std::thread::Builder::new().name("migtrace-forker".into()).spawn(move || {
                for job in rx {
                    job();
                }
            });
            started.ok().map(|_| tx)
        })
        .as_ref()
}

/// Makes the child of `cmd` get SIGKILL when this process ends.
fn tie(cmd: &mut std::process::Command) {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; the error is built without
    // allocating.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // We died between the fork and the prctl: nobody will signal this child.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn gone() -> io::Error {
    io::Error::other("migtrace's forking thread is not running")
}

/// Spawns `cmd` so that the child gets SIGKILL when this process ends, from a thread
/// that lives as long as the process. Must be called within a tokio runtime (the child
/// is reaped by it).
pub async fn spawn(mut cmd: Command) -> io::Result<Child> {
    tie(cmd.as_std_mut());
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        let _ = tx.send(cmd.spawn());
    });
    forker().ok_or_else(gone)?.send(job).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// [`spawn`] for a `std` command (waits for the fork; no runtime needed).
pub fn spawn_std(mut cmd: std::process::Command) -> io::Result<std::process::Child> {
    tie(&mut cmd);
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    forker().ok_or_else(gone)?.send(job).map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A runtime whose idle blocking threads exit after 50 ms.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_keep_alive(Duration::from_millis(50))
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_tied_child_outlives_the_thread_that_asked_for_it() {
        runtime().block_on(async {
            // The hazard: PDEATHSIG set by a child forked on a blocking-pool thread fires
            // when that thread retires.
            let mut naive = tokio::task::spawn_blocking(|| {
                let mut cmd = std::process::Command::new("sleep");
                cmd.arg("30");
                // SAFETY: prctl only.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                cmd.spawn().expect("sleep")
            })
            .await
            .expect("join");
            // Asked for from the same kind of thread, a tied child lives on.
            let mut tied = tokio::task::spawn_blocking(|| {
                let mut cmd = Command::new("sleep");
                cmd.arg("30").kill_on_drop(true);
                tokio::runtime::Handle::current().block_on(spawn(cmd))
            })
            .await
            .expect("join")
            .expect("tied sleep");
            tokio::time::sleep(Duration::from_millis(600)).await;
            let naive_status = naive.try_wait().expect("poll");
            assert!(
                naive_status.is_some(),
                "the control child should have died with its retired thread (PDEATHSIG follows threads)"
            );
            let _ = naive.kill();
            let _ = naive.wait();
            assert!(tied.try_wait().expect("poll").is_none(), "the tied child died with the thread that asked for it");
            tied.kill().await.expect("kill");
        });
    }
}
