//! Back-off, delayed messages and task bookkeeping, written once for every
//! actor of the crate.
//!
//! * [`backoff`]: the delay before the next attempt after a run of
//!   failures, doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`]; the
//!   exchange session retries requests on it and the supervisor restarts
//!   failed children on it ([`backoff_between`] with other bounds: the
//!   router's dataplane worker applies a failed batch again on it). A pure
//!   function: the pure cores use it too.
//! * [`cast_after`]: "send me this message later", a task the caller
//!   keeps so that it can cancel the message by aborting it.
//! * [`replace_task`] and [`abort_and_wait`]: keeping the latest task of a
//!   kind (the earlier one aborted) and stopping every task an actor owns.
//!
//! Everything runs on tokio time, so paused time in tests and the
//! simulation drives it.

use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::task::JoinHandle;

/// First delay after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The delay before the next attempt after `failures` consecutive
/// failures: [`BACKOFF_MIN`] after the first, doubling, at most
/// [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    backoff_between(BACKOFF_MIN, BACKOFF_MAX, failures)
}

/// [`backoff`] from `first` up to `most` (kept in `ddm-dataplane`, whose
/// link watcher uses it too).
pub use ddm_dataplane::backoff_between;

/// Cast `msg` to `to` after `after`, unless the returned task is aborted
/// first. An actor gone by then is no error: the message is dropped.
pub fn cast_after<M: Message>(
    to: &ActorRef<M>,
    after: Duration,
    msg: M,
) -> JoinHandle<()> {
    let to = to.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = to.cast(msg);
    })
}

/// Keep `task` in `slot`, aborting the task it held.
pub fn replace_task(slot: &mut Option<JoinHandle<()>>, task: JoinHandle<()>) {
    if let Some(old) = slot.replace(task) {
        old.abort();
    }
}

/// Abort every task of `tasks`, then wait until each has ended (so that
/// what they hold, a listening socket for one, is released).
pub async fn abort_and_wait(tasks: impl IntoIterator<Item = JoinHandle<()>>) {
    let tasks: Vec<_> = tasks.into_iter().collect();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(ms(0), 100);
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [100, 200, 400, 800, 1600]
        );
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
