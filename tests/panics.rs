//! User code can panic anywhere: values whose `Drop` panics, dropped by commit, by rollback
//! (plain and during unwinding), by reclamation and by the map's own drop. After each, every
//! value is dropped exactly once, nothing still mapped has been dropped, no slot leaks and
//! the map answers correctly. Small enough to run under Miri (`scripts/verify.sh`).

use physmap::PhysMap;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// Which values are alive: each `Tracked` registers its id when made and removes it when
/// dropped (a second drop of the same id fails the test), and panics on drop if it is a bomb.
#[derive(Default, Clone)]
struct Registry(Arc<Mutex<HashSet<u64>>>);

impl Registry {
    fn value(&self, id: u64) -> Tracked {
        assert!(self.0.lock().unwrap().insert(id), "id {id} made twice");
        Tracked {
            id,
            bomb: false,
            reg: self.clone(),
        }
    }
    fn bomb(&self, id: u64) -> Tracked {
        let mut v = self.value(id);
        v.bomb = true;
        v
    }
    fn alive(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.0.lock().unwrap().iter().copied().collect();
        v.sort_unstable();
        v
    }
}

struct Tracked {
    id: u64,
    bomb: bool,
    reg: Registry,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Never panic while holding the registry lock: the lock would be poisoned.
        let was_alive = self
            .reg
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        assert!(was_alive, "value {} dropped twice", self.id);
        if self.bomb {
            panic!("Drop of value {} panics", self.id);
        }
    }
}

/// Looks `addr` up and checks the value found is alive and is `want`.
fn expect(map: &PhysMap<Tracked>, reg: &Registry, addr: u64, want: Option<u64>) {
    let snap = map.snapshot();
    let got = snap.lookup(addr).map(|h| h.value.id);
    assert_eq!(got, want, "snapshot lookup at {addr:#x}");
    if let Some(id) = got {
        assert!(
            reg.alive().contains(&id),
            "value {id} is mapped but was dropped"
        );
    }
    let mut r = map.reader();
    assert_eq!(
        r.lookup(addr).map(|h| h.value.id),
        want,
        "reader lookup at {addr:#x}"
    );
}

/// The arena holds exactly the newest tree (nothing leaked, nothing pinned).
fn no_leak(map: &PhysMap<Tracked>) {
    let mem = map.memory();
    let stats = map.snapshot().stats();
    assert_eq!(mem.live_bytes, stats.bytes, "{mem:?} vs {stats:?}");
    assert_eq!(
        (mem.nodes, mem.pieces, mem.sections, mem.subpage_tables),
        (
            stats.nodes,
            stats.pieces,
            stats.sections,
            stats.subpage_tables
        )
    );
}

fn commit(map: &PhysMap<Tracked>, f: impl FnOnce(&mut physmap::Transaction<'_, Tracked>)) {
    let mut t = map.transaction();
    f(&mut t);
    t.commit().unwrap();
}

/// The reproduction: a never-published value whose `Drop` panics inside `commit`
/// used to be freed twice (once by commit, once by the rollback that the unwinding ran), so
/// later values shared a slot and a `&V` to freed memory came out of a lookup.
#[test]
fn panicking_drop_in_commit_frees_each_slot_once() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| t.insert(0..0x1000, reg.value(1)).unwrap());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        t.insert(0x1000..0x2000, reg.bomb(2)).unwrap();
        t.overwrite(0x1000..0x2000, reg.value(3)).unwrap();
        t.commit()
    }));
    assert!(r.is_err(), "the bomb's panic reaches the caller");
    // The commit took effect before the value was dropped: value 3 is mapped.
    expect(&map, &reg, 0x1800, Some(3));
    assert_eq!(reg.alive(), vec![1, 3]);
    for (i, id) in [0x10_000u64, 0x20_000, 0x30_000]
        .into_iter()
        .zip([10, 20, 30])
    {
        commit(&map, |t| t.insert(i..i + 0x1000, reg.value(id)).unwrap());
    }
    expect(&map, &reg, 0x20_000, Some(20));
    expect(&map, &reg, 0x30_000, Some(30));
    commit(&map, |t| t.remove(0x30_000..0x31_000).unwrap());
    no_leak(&map);
    expect(&map, &reg, 0x20_000, Some(20));
    expect(&map, &reg, 0x10_000, Some(10));
    expect(&map, &reg, 0x0, Some(1));
    assert_eq!(reg.alive(), vec![1, 3, 10, 20]);
    drop(map);
    assert!(reg.alive().is_empty());
}

/// Rollback by dropping the transaction: every value it made is dropped once, even those
/// after the bomb, and the bomb's panic comes out of the drop.
#[test]
fn panicking_drop_in_rollback_drops_the_rest_and_leaks_nothing() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| t.insert(0..0x1000, reg.value(1)).unwrap());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        t.insert(0x1000..0x2000, reg.value(2)).unwrap();
        t.insert(0x2000..0x3000, reg.bomb(3)).unwrap();
        t.insert(0x3000..0x4000, reg.value(4)).unwrap();
        t.overwrite(0..0x800, reg.value(5)).unwrap();
        drop(t);
    }));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![1]);
    expect(&map, &reg, 0x10, Some(1));
    expect(&map, &reg, 0x1800, None);
    no_leak(&map);
    commit(&map, |t| t.insert(0x1000..0x2000, reg.value(6)).unwrap());
    expect(&map, &reg, 0x1800, Some(6));
    no_leak(&map);
}

/// Rollback while already unwinding from the writer's own panic: a second panic must not
/// abort the process; the values are all dropped and the first panic is what propagates.
#[test]
fn panicking_drop_while_unwinding_from_a_writer_panic() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| t.insert(0..0x1000, reg.value(1)).unwrap());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        t.insert(0x1000..0x2000, reg.bomb(2)).unwrap();
        t.insert(0x2000..0x3000, reg.value(3)).unwrap();
        panic!("control plane bug");
    }));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"control plane bug"));
    assert_eq!(reg.alive(), vec![1]);
    expect(&map, &reg, 0x1800, None);
    no_leak(&map);
}

/// Reclamation drops values retired by earlier commits; a bomb among them must not leak the
/// rest of its batch, nor later batches.
#[test]
fn panicking_drop_in_reclaim_frees_the_whole_batch() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| {
        t.insert(0..0x1000, reg.value(1)).unwrap();
        t.insert(0x1000..0x2000, reg.bomb(2)).unwrap();
        t.insert(0x2000..0x3000, reg.value(3)).unwrap();
        t.insert(0x4000..0x4100, reg.value(4)).unwrap();
        t.insert(0x4100..0x4200, reg.value(5)).unwrap();
    });
    let held = map.snapshot();
    commit(&map, |t| t.remove(0x1000..0x5000).unwrap()); // retires 2, 3, 4, 5
    commit(&map, |t| t.overwrite(0..0x1000, reg.value(6)).unwrap()); // retires 1
    assert_eq!(
        reg.alive(),
        vec![1, 2, 3, 4, 5, 6],
        "the snapshot holds them"
    );
    drop(held);
    let r = catch_unwind(AssertUnwindSafe(|| map.memory()));
    assert!(
        r.is_err(),
        "the bomb's panic comes out of the reclaiming call"
    );
    assert_eq!(reg.alive(), vec![6]);
    expect(&map, &reg, 0x10, Some(6));
    expect(&map, &reg, 0x1800, None);
    no_leak(&map);
    // The same through `transaction()`, which also reclaims.
    commit(&map, |t| t.insert(0x8000..0x9000, reg.bomb(7)).unwrap());
    commit(&map, |t| t.overwrite(0x8000..0x9000, reg.value(8)).unwrap());
    let r = catch_unwind(AssertUnwindSafe(|| drop(map.transaction())));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![6, 8]);
    expect(&map, &reg, 0x8000, Some(8));
    no_leak(&map);
}

/// Dropping the map drops every value, even past two bombs, and a panic comes out of the drop.
#[test]
fn panicking_drop_when_the_map_is_dropped() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| {
        for i in 0..40u64 {
            let v = if i == 7 || i == 30 {
                reg.bomb(i)
            } else {
                reg.value(i)
            };
            t.insert(i * 0x1000..(i + 1) * 0x1000, v).unwrap();
        }
    });
    let held = map.snapshot();
    commit(&map, |t| t.overwrite(0..0x4000, reg.value(100)).unwrap());
    assert_eq!(reg.alive().len(), 41);
    let r = catch_unwind(AssertUnwindSafe(|| drop(map)));
    assert!(r.is_ok(), "the old snapshot still holds the storage");
    let r = catch_unwind(AssertUnwindSafe(|| drop(held)));
    assert!(r.is_err(), "the last holder drops the values");
    assert!(reg.alive().is_empty(), "left: {:?}", reg.alive());
}

/// A rejected `extend` drops its whole batch, even past two bombs (a second panic while
/// dropping a `Vec` would abort the process).
#[test]
fn panicking_drop_in_a_rejected_batch() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| t.insert(0..0x1000, reg.value(1)).unwrap());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        let batch = vec![
            (0x1000..0x2000, reg.value(2)),
            (0x2000..0x3000, reg.bomb(3)),
            (0x3000..0x4000, reg.bomb(4)),
            (0x800..0x900, reg.value(5)), // overlaps value 1: the batch is refused
        ];
        t.extend(batch)
    }));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![1]);
    no_leak(&map);
}

/// A value shared by many ranges (`insert_shared`) lives until its last range goes, is
/// dropped once, and a panicking `Drop` then (in reclaim) or on a refused batch leaks
/// nothing.
#[test]
fn shared_value_is_dropped_once_with_its_last_range() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| {
        let pages = [0x1000..0x2000, 0x3000..0x4000, 0x5000..0x6000];
        t.insert_shared(pages, reg.bomb(1)).unwrap();
    });
    assert_eq!(map.memory().sections, 1);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        // Overlaps value 1's second page: refused, the value dropped (and it panics).
        t.insert_shared([0x8000..0x9000, 0x3800..0x3900], reg.bomb(2))
    }));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![1]);
    commit(&map, |t| t.remove(0x1000..0x4000).unwrap());
    expect(&map, &reg, 0x5800, Some(1));
    assert_eq!(map.snapshot().lookup(0x5800).unwrap().offset, 0x800);
    no_leak(&map);
    commit(&map, |t| t.remove(0x5000..0x6000).unwrap());
    // The next writer reclaims the section and drops the value, which panics.
    let r = catch_unwind(AssertUnwindSafe(|| map.memory()));
    assert!(r.is_err());
    assert!(reg.alive().is_empty(), "left: {:?}", reg.alive());
    no_leak(&map);
    expect(&map, &reg, 0x5800, None);
}

/// A shared value made and then dropped by the same transaction (rolled back, or all its
/// ranges removed before the commit, or a batch of thousands of ranges rolled back) is
/// dropped exactly once, and a panicking `Drop` there leaks nothing.
#[test]
fn shared_value_made_and_dropped_in_one_transaction() {
    let reg = Registry::default();
    let map = PhysMap::new();
    commit(&map, |t| t.insert(0..0x1000, reg.value(1)).unwrap());
    // Rolled back (the bomb goes off in the rollback).
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        t.insert_shared([0x1000..0x2000, 0x4000..0x5000], reg.bomb(2))
            .unwrap();
        t.rollback();
    }));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![1]);
    no_leak(&map);
    // Every range removed before the commit: never published, freed by the commit.
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        t.insert_shared([0x1000..0x2000, 0x4000..0x5000], reg.bomb(3))
            .unwrap();
        t.insert(0x8000..0x9000, reg.value(4)).unwrap();
        t.remove(0x1000..0x5000).unwrap();
        t.commit()
    }));
    assert!(
        r.is_err(),
        "the never-published value's Drop panics in commit"
    );
    assert_eq!(reg.alive(), vec![1, 4]);
    expect(&map, &reg, 0x8000, Some(4));
    expect(&map, &reg, 0x1000, None);
    no_leak(&map);
    // Thousands of ranges (the writer merges them in one go) rolled back.
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = map.transaction();
        let pages = (0x10u64..0x10 + 3000).map(|i| i << 12..(i << 12) + 0x800);
        t.insert_shared(pages, reg.bomb(5)).unwrap();
        drop(t);
    }));
    assert!(r.is_err());
    assert_eq!(reg.alive(), vec![1, 4]);
    expect(&map, &reg, 0x10_000, None);
    no_leak(&map);
}
