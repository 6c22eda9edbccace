//! Dropping user values whose `Drop` may panic.
//!
//! Every writer path that drops values (commit, rollback, reclamation, the arena's own drop)
//! first brings the map to a consistent state (slots freed exactly once, bookkeeping done),
//! takes the values out of their slots, and only then drops them here. A panic in one value's
//! `Drop` therefore cannot reach a second free of a slot, and does not stop the other values
//! from being dropped: each is dropped under `catch_unwind`, and the first panic is resumed
//! once all are gone (or swallowed, if the thread is already unwinding from another panic,
//! where a second panic would abort the process).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Drops every value, then re-raises the first panic a `Drop` raised (see the module docs).
pub(crate) fn drop_all<V>(values: impl IntoIterator<Item = V>) {
    if !std::mem::needs_drop::<V>() {
        return;
    }
    let mut first = None;
    for value in values {
        // AssertUnwindSafe: the value is gone whatever happens; nothing of ours is observed
        // in a broken state (the caller finished its bookkeeping before calling us).
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            first.get_or_insert(panic);
        }
    }
    if let Some(panic) = first {
        if !std::thread::panicking() {
            resume_unwind(panic);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    struct Bomb(bool);
    impl Drop for Bomb {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            if self.0 {
                panic!("bomb");
            }
        }
    }

    #[test]
    fn every_value_is_dropped_and_the_first_panic_comes_out() {
        let values = vec![
            Bomb(false),
            Bomb(true),
            Bomb(false),
            Bomb(true),
            Bomb(false),
        ];
        let r = catch_unwind(AssertUnwindSafe(|| drop_all(values)));
        assert!(r.is_err());
        assert_eq!(DROPPED.load(Ordering::Relaxed), 5);
    }
}
