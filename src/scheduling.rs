//! How the kernel schedules the worker's threads (`pipeline.scheduling`, Linux only).
//!
//! Two Linux policies matter here. Under `SCHED_OTHER` (the default) a thread that wakes,
//! a cutout worker handed a detection or the sink handed a result, may preempt a running
//! one at once: the shortest path for one detection, but on busy cores inference is
//! interrupted about once per item and loses its caches. Under `SCHED_BATCH` a waking
//! thread waits for the running one's time slice to end: inference keeps its slices and
//! costs less CPU per item, and a detection may wait a little longer. A backlog wants the
//! second trade, a live stream the first, so the default follows the work: batch while
//! detections queue, normal when they do not ([`Adaptive`]).
//!
//! A policy is per thread, and a thread starts with its creator's, so switching the whole
//! process means every thread in `/proc/self/task`; threads started later inherit it.

use std::io;

use crate::config::Scheduling;

/// Gives every thread of the process `SCHED_BATCH` (`batch`) or `SCHED_OTHER`. A thread
/// that ends meanwhile is skipped; one started meanwhile by a thread not yet switched may
/// keep the old policy until the next switch. Does nothing outside Linux.
pub fn set_process_policy(batch: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = if batch {
            libc::SCHED_BATCH
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        for entry in std::fs::read_dir("/proc/self/task")? {
            let name = entry?.file_name();
            let Some(tid) = name.to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            // SAFETY: sched_setscheduler only reads `param`, which outlives the call; a tid
            // that is no longer ours (the thread ended) fails with ESRCH, handled below.
            if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = batch;
    Ok(())
}

/// The policy a run starts with: `batch` switches the process at once, `adaptive` and
/// `normal` leave it as it is (the default policy). Returns the [`Adaptive`] switch when the
/// configuration asks for one. A kernel that refuses the policy is logged, not fatal: the
/// run goes on with the default.
pub fn start(mode: Scheduling, at_once: u64) -> Option<Adaptive> {
    match mode {
        Scheduling::Normal => None,
        Scheduling::Batch => {
            if let Err(e) = set_process_policy(true) {
                refused(&e);
            }
            None
        }
        Scheduling::Adaptive => Some(Adaptive::new(at_once)),
    }
}

fn refused(e: &io::Error) {
    tracing::warn!(
        error = %e,
        "pipeline.scheduling: the kernel refused the policy; the threads keep the one they have"
    );
}

/// `pipeline.scheduling = "adaptive"`: `SCHED_BATCH` while a backlog waits, `SCHED_OTHER`
/// otherwise. The sink reports how many detections are in flight (taken in, outcome not yet
/// written) after each write; the process turns batch when they exceed four times what the
/// stages work on at once (a queue is building up) and normal again when they are no more
/// than that (a live stream), so a stream near the boundary does not flip at every item.
#[derive(Debug)]
pub struct Adaptive {
    enter: u64,
    leave: u64,
    batch: bool,
    /// Set when the kernel refused a switch: no further tries.
    refused: bool,
}

impl Adaptive {
    /// `at_once`: the detections the stages work on at once without queueing.
    pub fn new(at_once: u64) -> Self {
        let leave = at_once.max(1);
        Self {
            enter: leave.saturating_mul(4),
            leave,
            batch: false,
            refused: false,
        }
    }

    /// Switches the process's policy when `in_flight` crosses a threshold.
    pub fn observe(&mut self, in_flight: u64) {
        let want = if self.batch {
            in_flight > self.leave
        } else {
            in_flight > self.enter
        };
        if want == self.batch || self.refused {
            return;
        }
        match set_process_policy(want) {
            Ok(()) => {
                self.batch = want;
                tracing::debug!(
                    batch = want,
                    in_flight,
                    "threads' scheduling policy switched"
                );
            }
            Err(e) => {
                self.refused = true;
                refused(&e);
            }
        }
    }

    /// Whether the process runs `SCHED_BATCH` now.
    pub fn is_batch(&self) -> bool {
        self.batch
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: sched_getscheduler only reads the thread's policy.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A thread that reports its tid and waits until told to end.
    fn parked_thread() -> (libc::pid_t, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (end_tx, end_rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx
                .send(unsafe { libc::gettid() })
                .expect("test reads the tid");
            let _ = end_rx.recv();
        });
        let tid = tid_rx.recv().expect("the thread reports its tid");
        (tid, end_tx, handle)
    }

    // One test: the policy is process-wide, so tests that switch it must not run side by side.
    #[test]
    fn the_whole_process_follows_the_backlog_and_new_threads_inherit() {
        let (tid, end, handle) = parked_thread();
        let mut adaptive = Adaptive::new(6);
        adaptive.observe(24);
        assert!(
            !adaptive.is_batch(),
            "no more than 4 x 6 in flight: no backlog yet"
        );
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);

        adaptive.observe(25);
        assert!(adaptive.is_batch());
        assert_eq!(
            policy_of(tid),
            libc::SCHED_BATCH,
            "a thread already running"
        );
        assert_eq!(policy_of(0), libc::SCHED_BATCH, "the calling thread");
        let (started, end_started, started_handle) = parked_thread();
        assert_eq!(
            policy_of(started),
            libc::SCHED_BATCH,
            "a thread started after"
        );

        adaptive.observe(7);
        assert!(adaptive.is_batch(), "above 6 in flight: still a backlog");
        adaptive.observe(6);
        assert!(!adaptive.is_batch());
        for t in [tid, started, 0] {
            assert_eq!(policy_of(t), libc::SCHED_OTHER);
        }

        for (end, handle) in [(end, handle), (end_started, started_handle)] {
            drop(end);
            handle.join().expect("the thread ends");
        }
        set_process_policy(true).expect("SCHED_BATCH needs no privilege");
        assert_eq!(policy_of(0), libc::SCHED_BATCH);
        set_process_policy(false).expect("back to the default");
        assert_eq!(policy_of(0), libc::SCHED_OTHER);
    }
}
