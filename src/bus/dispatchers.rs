//! The dispatches in progress, to tell whether the calling thread is inside one (then `synchronize`
//! must not wait: the `bus` module docs) without a thread-local access on the dispatch path, which
//! costs a dispatch from cold caches two or three more cache lines (the thread's control block, the
//! variable, and the call's address). A dispatch instead writes its frame address into its reader's
//! own state (`Reader::mark_dispatch`), which it writes anyway; `synchronize` looks for an online
//! dispatcher whose mark lies in the calling thread's stack.

use crate::reader::dispatch::DispatchMark;
use std::sync::{Mutex, Weak};

/// Every `BusVcpu`'s mark, of every bus.
static ALL: Mutex<Vec<Weak<dyn DispatchMark>>> = Mutex::new(Vec::new());

pub(super) fn add(mark: Weak<dyn DispatchMark>) {
    let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|m| m.strong_count() > 0);
    all.push(mark);
}

/// Whether a dispatch (on any bus) is in progress on the calling thread.
pub(super) fn on_this_thread() -> bool {
    let (lo, hi) = stack::bounds().unwrap_or_else(|| {
        // Where the thread's stack is unknown: a dispatch of this thread, being in
        // progress up the stack from here, is taken to be within 1 MiB of this frame
        // (thread stacks are further apart than that).
        let here = std::hint::black_box(0u8);
        let here = &here as *const u8 as usize;
        (here, here + (1 << 20))
    });
    marks().any(|m| (lo..hi).contains(&m))
}

/// The marks of the dispatches in progress.
fn marks() -> impl Iterator<Item = usize> {
    let all = ALL.lock().unwrap_or_else(|p| p.into_inner());
    let marks: Vec<usize> = all
        .iter()
        .filter_map(|m| m.upgrade()?.dispatching())
        .collect();
    marks.into_iter()
}

/// The calling thread's stack, `[lo, hi)` (not under Miri, which has no
/// `pthread_getattr_np`: there the 1 MiB window above).
#[cfg(all(target_os = "linux", not(miri)))]
mod stack {
    use std::cell::Cell;

    thread_local! {
        /// Found once per thread (for the main thread, glibc reads /proc/self/maps).
        static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    }

    pub(crate) fn bounds() -> Option<(usize, usize)> {
        if let Some(b) = BOUNDS.with(|b| b.get()) {
            return Some(b);
        }
        let b = query()?;
        BOUNDS.with(|c| c.set(Some(b)));
        Some(b)
    }

    fn query() -> Option<(usize, usize)> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: pthread_getattr_np initialises `attr` for the calling thread (0 on
        // success); pthread_attr_getstack reads it; pthread_attr_destroy frees it once.
        unsafe {
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                return None;
            }
            let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
            let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            ok.then(|| (addr as usize, addr as usize + size))
        }
    }
}

#[cfg(any(not(target_os = "linux"), miri))]
mod stack {
    pub(crate) fn bounds() -> Option<(usize, usize)> {
        None
    }
}
