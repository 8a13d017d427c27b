//! How many threads libtorch gets for the next step (`train.threads`).
//!
//! libtorch runs an op over its threads and waits for the slowest: with 2 threads on 2
//! cores and one other busy process, the scheduler keeps one of our threads off a core
//! for a time slice now and then, and every op waits for it. A GRPO step on the 0.8M
//! model went from 0.32 s to 1.6-3.4 s that way, while one thread took 0.59 s. So by
//! default each step looks at how much CPU other processes took during the last one,
//! and leaves them their cores: threads = cores - (their load, rounded), at least 1.
//! A fixed count keeps runs bit-for-bit repeatable across machines and loads (the
//! float sums inside libtorch are split by thread count).

use std::time::Instant;

/// CPU time counters, in clock ticks: the machine's busy and total time (all cores)
/// and this process's.
#[derive(Clone, Copy)]
struct Ticks {
    busy: u64,
    total: u64,
    ours: u64,
}

fn read_ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let &[user, nice, system, idle, iowait, irq, softirq, steal] = fields.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are the 12th and 13th of them.
    let after = own.rsplit_once(')')?.1;
    let times: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(Ticks {
        busy,
        total: busy + idle + iowait,
        ours: times.iter().sum(),
    })
}

/// Cores' worth of CPU other processes used between two readings.
fn others_load(before: Ticks, after: Ticks, cores: usize) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.ours.saturating_sub(before.ours);
    cores as f64 * busy.saturating_sub(ours) as f64 / total as f64
}

/// The thread count for a step when other processes use `load` cores of `cores`.
fn threads_for(load: f64, cores: usize, most: usize) -> usize {
    let left = cores.saturating_sub(load.round() as usize);
    left.clamp(1, most.max(1))
}

pub struct ThreadGovernor {
    /// `None`: adapt; otherwise the fixed count.
    fixed: Option<usize>,
    cores: usize,
    /// The thread count libtorch had when the run started: the most a step gets.
    most: usize,
    last: Option<(Ticks, Instant)>,
}

impl ThreadGovernor {
    /// `threads` 0 adapts to the machine's load; any other number is kept.
    pub fn new(threads: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = tch::get_num_threads().max(1) as usize;
        let fixed = (threads > 0).then_some(threads);
        if let Some(n) = fixed {
            tch::set_num_threads(n as i32);
        }
        Self {
            fixed,
            cores,
            most,
            last: None,
        }
    }

    /// Sets libtorch's thread count for the coming step and returns it.
    pub fn before_step(&mut self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let now = read_ticks();
        let threads = match (self.last, now) {
            // Too short a window says nothing: clock ticks are 10 ms.
            (Some((before, at)), Some(after)) if at.elapsed().as_secs_f64() > 0.05 => threads_for(
                others_load(before, after, self.cores),
                self.cores,
                self.most,
            ),
            _ => self.most,
        };
        self.last = now.map(|t| (t, Instant::now()));
        tch::set_num_threads(threads as i32);
        threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_processes_get_their_cores_back() {
        let ticks = |busy, total, ours| Ticks { busy, total, ours };
        // 2 cores over 100 ticks of wall time: 200 ticks in all.
        let before = ticks(1000, 5000, 300);
        // We used 100 ticks, someone else 100: one core's worth.
        let load = others_load(before, ticks(1200, 5200, 400), 2);
        assert!((load - 1.0).abs() < 1e-9);
        assert_eq!(threads_for(load, 2, 2), 1);
        // Only us: all threads.
        let load = others_load(before, ticks(1150, 5200, 450), 2);
        assert_eq!(load, 0.0);
        assert_eq!(threads_for(load, 2, 2), 2);
        // Never below one, never above the run's count.
        assert_eq!(threads_for(5.0, 2, 2), 1);
        assert_eq!(threads_for(0.0, 16, 4), 4);
    }

    #[test]
    fn this_machine_has_readable_counters_or_none() {
        if let Some(t) = read_ticks() {
            assert!(t.total >= t.busy);
        }
    }
}
