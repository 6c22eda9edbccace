//! The QEMU dump reader on arbitrary text: it returns a dump or an error, never panics, and
//! whatever it accepts (and `FlatView::check` accepts) builds a map that answers for every
//! range's first and last byte with that range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use physmap::mtree::Dump;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(dump) = Dump::parse(&text, "fuzz") else {
        return;
    };
    let _ = dump.address_space_names();
    for fv in &dump.flatviews {
        let _ = fv.label();
        if let Some(d) = &fv.dispatch {
            let _ = (d.reachable_nodes(), d.subpage_tables(), d.bytes());
        }
        if fv.check("fuzz").is_err() {
            continue;
        }
        let map = fv.build().expect("checked ranges build");
        let snap = map.snapshot();
        for (i, r) in fv.ranges.iter().enumerate() {
            for a in [r.start, r.end] {
                let hit = snap.lookup(a).expect("a range's own byte is mapped");
                assert_eq!(*hit.value, i);
                assert_eq!(hit.offset, a - r.start);
                // The parser guarantees this cannot wrap.
                let _ = hit.offset.checked_add(r.offset).expect("offset fits");
            }
        }
        assert_eq!(snap.iter().count(), fv.ranges.len());
    }
});
