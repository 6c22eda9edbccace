//! What a bus dispatch asks of its [`Reader`] (`bus.rs`): entering the held generation inline,
//! the walk from the remembered region, the bus's score, and the dispatch mark that tells a
//! `synchronize` called from inside a device handler not to wait.

use super::*;

impl<V> Reader<V> {
    /// Goes online for a bus dispatch in the generation it held last, the common case: inline
    /// and with no call (a bus's reader is offline between dispatches). False if the reader
    /// was online, or if a newer generation is published: then the reader is offline again
    /// (having announced the newer one in passing: announcements only move forward, I8) and
    /// the caller goes online with [`online`](Reader::online), which copies the new header
    /// out of line, so that neither that copy nor the call making it enlarges
    /// the frame of every dispatch.
    #[inline(always)]
    pub(crate) fn dispatch_enter_held(&mut self) -> bool {
        if self.is_online() {
            return false;
        }
        let before = self.held & !OFFLINE;
        let barrier = self.state.own.barrier;
        let (generation, newer) =
            self.state
                .slot
                .enter(self.latest(), barrier, before, |_: &Version<V>| ());
        if newer.is_none() {
            self.held = generation;
            return true;
        }
        // Offline again; the handle still holds `before`'s header, which `enter` compares
        // with.
        self.state.slot.leave(barrier);
        false
    }

    /// The lookup of a bus dispatch, once online: the walk from the remembered region
    /// ([`Held::find_near`]) alone (the bus remembers placements itself, on a line of its
    /// own).
    #[inline(always)]
    pub(crate) fn dispatch_lookup(&self, addr: u64) -> Option<Hit<'_, V>> {
        let own = &self.state.own;
        let (found, near) = Self::held(own.hot.get(), own.near(), &self.state).find_near(addr);
        own.set_near(near);
        let found = found?;
        Some(Hit::new(found.value(), found.piece(), addr))
    }

    /// The owning bus's score of its recent placements (`bus.rs`), on the reader's first
    /// line.
    #[inline(always)]
    pub(crate) fn bus_score(&self) -> u8 {
        self.state.own.bus_score.get()
    }

    /// Sets the bus's score (`bus.rs`).
    #[inline(always)]
    pub(crate) fn set_bus_score(&self, score: u8) {
        self.state.own.bus_score.set(score);
    }

    /// Marks a bus dispatch in progress on this reader, whose frame is at `frame` (it counts
    /// while the reader is online). Written to the reader's own state; read by `bus.rs` to
    /// tell whether the calling thread is inside a dispatch.
    #[inline(always)]
    pub(crate) fn mark_dispatch(&self, frame: usize) {
        // Relaxed: only this thread writes it; a reader of another thread needs no order
        // with it (`bus.rs`).
        self.state.dispatching.store(frame, Ordering::Relaxed);
    }

    /// The dispatch mark of this reader, for the bus's list of dispatchers.
    pub(crate) fn dispatch_mark(&self) -> std::sync::Weak<dyn DispatchMark> {
        let state: StdArc<dyn DispatchMark> = self.state.clone();
        StdArc::downgrade(&state)
    }
}

impl Own {
    /// The region the bus's walks remember.
    #[inline(always)]
    fn near(&self) -> Near {
        Near {
            key: self.near_key.get(),
            entry: self.near.get(),
        }
    }
}

/// A reader's dispatch mark, as the bus reads it from any thread (`bus.rs`).
pub(crate) trait DispatchMark: Send + Sync {
    /// The frame address of the dispatch in progress, if the reader is online.
    fn dispatching(&self) -> Option<usize>;
}

impl DispatchMark for State {
    fn dispatching(&self) -> Option<usize> {
        // Relaxed: the bus compares it with the calling thread's stack; a dispatch of that
        // thread wrote both on that thread, earlier in its program order. Another thread's
        // mark is in another stack, whatever value of it is read. Only online readers count:
        // a bus reader is online exactly while it dispatches.
        let online = self.slot.held() & OFFLINE == 0;
        online.then(|| self.dispatching.load(Ordering::Relaxed))
    }
}
