//! Ordered parallel map over numbered work units, with std threads only.

use std::sync::mpsc::sync_channel;

use crate::error::Result;

/// Number of worker threads to use: every core the process may run on.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

/// Runs `work(u)` for every unit `0..units` on several threads and hands the results to `sink`
/// in unit order. Worker `w` takes units `w, w + W, …`, so the consumer reads worker `u % W`'s
/// channel for unit `u`; bounded channels keep at most a few units in memory per worker.
/// The first error (from a worker or the sink) stops everything and is returned.
pub(crate) fn ordered<T: Send>(
    units: u64,
    work: impl Fn(u64) -> Result<T> + Sync,
    sink: impl FnMut(u64, T) -> Result<()>,
) -> Result<()> {
    ordered_with(units, || (), |_, u| work(u), sink)
}

/// [`ordered`] with state private to each worker: `init` runs once per worker and `work` gets
/// that worker's state for every unit it owns. Buffers and (de)compressor streams live there,
/// so a unit reuses them instead of allocating and zeroing its own.
pub(crate) fn ordered_with<S, T: Send>(
    units: u64,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, u64) -> Result<T> + Sync,
    mut sink: impl FnMut(u64, T) -> Result<()>,
) -> Result<()> {
    let w = threads().min(units.max(1) as usize);
    if w <= 1 {
        let mut st = init();
        for u in 0..units {
            sink(u, work(&mut st, u)?)?;
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let mut rxs = Vec::with_capacity(w);
        for k in 0..w {
            let (tx, rx) = sync_channel::<Result<T>>(2);
            rxs.push(rx);
            let (work, init) = (&work, &init);
            s.spawn(move || {
                let mut st = init();
                let mut u = k as u64;
                while u < units {
                    let r = work(&mut st, u);
                    let failed = r.is_err();
                    // A closed channel means the consumer stopped: nothing left to do.
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                    u += w as u64;
                }
            });
        }
        for u in 0..units {
            let r = rxs[(u % w as u64) as usize]
                .recv()
                .expect("worker sends a result or an error for every unit it owns")?;
            sink(u, r)?;
        }
        Ok(())
    })
}
