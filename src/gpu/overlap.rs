//! Overlapping a [`super::TileMapper`]'s work with the CPU's.
//!
//! With a mapper in the pipeline, the encoder scatters stripe `i + 1` while the CPU deflates
//! stripe `i`, and the decoder inflates batch `i + 1` while the mapper gathers batch `i`. A GPU
//! call spends most of its time waiting for PCIe copies and kernels; without this overlap the
//! rayon pool would sit idle for all of it.

use std::ops::ControlFlow;
use std::sync::mpsc::sync_channel;

/// Runs `produce(i)` and then `consume(i, item)` for `i` in `0..count`, in order.
///
/// With `overlap`, `produce` runs on a helper thread, one item ahead: it makes item `i + 1`
/// while `consume` (on the calling thread) works on item `i`, so at most two items exist at a
/// time. Without it, both run on the calling thread, one after the other.
///
/// The first error from either side stops both and is returned; `consume` may also stop early
/// with `ControlFlow::Break` (for instance when its own consumer is gone). A panic in `produce`
/// is re-raised on the calling thread.
pub(crate) fn produce_consume<T, E, P, C>(
    count: usize,
    overlap: bool,
    mut produce: P,
    mut consume: C,
) -> Result<(), E>
where
    T: Send,
    E: Send,
    P: FnMut(usize) -> Result<T, E> + Send,
    C: FnMut(usize, T) -> Result<ControlFlow<()>, E>,
{
    if !overlap {
        for i in 0..count {
            let item = produce(i)?;
            if consume(i, item)?.is_break() {
                break;
            }
        }
        return Ok(());
    }
    std::thread::scope(|scope| {
        // A rendezvous channel: the producer hands item i over only when the consumer asks
        // for it, and meanwhile may already work on i + 1 — never further ahead.
        let (send, receive) = sync_channel::<Result<T, E>>(0);
        let producer = scope.spawn(move || {
            for i in 0..count {
                let item = produce(i);
                let failed = item.is_err();
                if send.send(item).is_err() || failed {
                    break;
                }
            }
        });
        let mut result = Ok(());
        for (i, item) in receive.iter().enumerate() {
            match item.and_then(|item| consume(i, item)) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Dropping the receiver makes the producer's next send fail, so it stops.
        drop(receive);
        if let Err(panic) = producer.join() {
            std::panic::resume_unwind(panic);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    /// Items arrive in order and each once, with and without overlap.
    #[test]
    fn every_item_is_consumed_in_order() {
        for overlap in [false, true] {
            let mut seen = Vec::new();
            produce_consume::<_, (), _, _>(
                50,
                overlap,
                |i| Ok(i * 3),
                |i, item| {
                    assert_eq!(item, i * 3);
                    seen.push(item);
                    Ok(ControlFlow::Continue(()))
                },
            )
            .unwrap();
            assert_eq!(seen, (0..50).map(|i| i * 3).collect::<Vec<_>>());
        }
    }

    /// The point of the module: `produce(1)` runs while `consume(0)` is still working. Here
    /// `consume(0)` does not return until `produce(1)` has started, so without overlap the two
    /// would wait for each other; the 10 s timeout turns that into a failure instead of a hang.
    #[test]
    fn the_next_item_is_produced_while_the_current_one_is_consumed() {
        let started = Arc::new((Mutex::new(Vec::<usize>::new()), Condvar::new()));
        let producer_side = Arc::clone(&started);
        let mut waited = Vec::new();
        produce_consume::<_, String, _, _>(
            4,
            true,
            move |i| {
                let (lock, cond) = &*producer_side;
                lock.lock().unwrap().push(i);
                cond.notify_all();
                Ok(i)
            },
            |i, _| {
                let (lock, cond) = &*started;
                let guard = lock.lock().unwrap();
                let (guard, timeout) = cond
                    .wait_timeout_while(guard, Duration::from_secs(10), |s| {
                        i + 1 < 4 && !s.contains(&(i + 1))
                    })
                    .unwrap();
                drop(guard);
                if timeout.timed_out() {
                    return Err(format!("produce({}) never ran during consume({i})", i + 1));
                }
                waited.push(i);
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap();
        assert_eq!(waited, vec![0, 1, 2, 3]);
    }

    /// Without overlap the producer never runs ahead: a cheap check that `overlap: false`
    /// really is the plain loop.
    #[test]
    fn without_overlap_production_waits_for_consumption() {
        let log = Mutex::new(Vec::new());
        produce_consume::<_, (), _, _>(
            3,
            false,
            |i| {
                log.lock().unwrap().push(format!("p{i}"));
                Ok(i)
            },
            |i, _| {
                log.lock().unwrap().push(format!("c{i}"));
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap();
        assert_eq!(
            log.into_inner().unwrap(),
            ["p0", "c0", "p1", "c1", "p2", "c2"]
        );
    }

    /// Errors on either side stop both sides; the producer stops at its first error.
    #[test]
    fn errors_stop_both_sides() {
        for overlap in [false, true] {
            let produced = Mutex::new(0usize);
            let err = produce_consume::<usize, String, _, _>(
                100,
                overlap,
                |i| {
                    *produced.lock().unwrap() += 1;
                    if i == 5 {
                        Err("produce 5".into())
                    } else {
                        Ok(i)
                    }
                },
                |_, _| Ok(ControlFlow::Continue(())),
            )
            .unwrap_err();
            assert_eq!(err, "produce 5");
            assert_eq!(*produced.lock().unwrap(), 6, "overlap {overlap}");

            let produced = Mutex::new(0usize);
            let mut consumed = 0;
            let err = produce_consume::<usize, String, _, _>(
                100,
                overlap,
                |i| {
                    *produced.lock().unwrap() += 1;
                    Ok(i)
                },
                |i, _| {
                    consumed += 1;
                    if i == 3 {
                        Err("consume 3".into())
                    } else {
                        Ok(ControlFlow::Continue(()))
                    }
                },
            )
            .unwrap_err();
            assert_eq!(err, "consume 3");
            assert_eq!(consumed, 4);
            // At most one item made ahead of the failure, plus the one blocked in hand-over.
            assert!(*produced.lock().unwrap() <= 6, "overlap {overlap}");
        }
    }

    #[test]
    fn break_stops_early() {
        for overlap in [false, true] {
            let mut consumed = 0;
            produce_consume::<_, (), _, _>(100, overlap, Ok, |i, _| {
                consumed += 1;
                Ok(if i == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })
            .unwrap();
            assert_eq!(consumed, 3);
        }
    }

    #[test]
    #[should_panic(expected = "producer broke")]
    fn a_producer_panic_reaches_the_caller() {
        let _ = produce_consume::<usize, (), _, _>(
            3,
            true,
            |i| {
                if i == 1 {
                    panic!("producer broke");
                }
                Ok(i)
            },
            |_, _| Ok(ControlFlow::Continue(())),
        );
    }
}
