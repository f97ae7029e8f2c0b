//! Process resources the tests and the benchmark watch: the open-descriptor limit
//! (every pooled connection is a descriptor) and the CPU time the process has used.
//!
//! Test support only, so it lives here and not in a published crate; `rustix` makes
//! each call safe, so this crate keeps `forbid(unsafe_code)` too.

use std::io;
use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use rustix::time::{clock_gettime, ClockId};

/// `RLIM_INFINITY` as these functions report it.
const UNLIMITED: u64 = u64::MAX;

/// The soft and hard `RLIMIT_NOFILE` of this process (`u64::MAX` for unlimited).
///
/// ```
/// let (soft, hard) = pool_testkit::process::nofile_limit().unwrap();
/// assert!(soft <= hard);
/// ```
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let lim = getrlimit(Resource::Nofile);
    Ok((
        lim.current.unwrap_or(UNLIMITED),
        lim.maximum.unwrap_or(UNLIMITED),
    ))
}

/// Sets the soft open-descriptor limit, clamped to the hard one; the limit now in force.
/// Lowering it is how a test puts the pool under descriptor pressure. Changing the soft
/// limit within the hard one needs no privilege and affects only this process.
pub fn set_nofile_soft(soft: u64) -> io::Result<u64> {
    let (_, hard) = nofile_limit()?;
    let soft = soft.min(hard);
    let finite = |v: u64| (v != UNLIMITED).then_some(v);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: finite(soft),
            maximum: finite(hard),
        },
    )?;
    Ok(soft)
}

/// Raises the soft open-descriptor limit to the hard one; the limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    let (_, hard) = nofile_limit()?;
    set_nofile_soft(hard)
}

/// User plus system CPU time this process has used, all threads together
/// (`CLOCK_PROCESS_CPUTIME_ID`, the sum `getrusage` splits into `ru_utime` and
/// `ru_stime`).
///
/// ```
/// let t = pool_testkit::process::cpu_time().unwrap();
/// assert!(t < std::time::Duration::from_secs(86_400 * 365));
/// ```
pub fn cpu_time() -> io::Result<Duration> {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_time().unwrap();
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(30);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time().unwrap() > before);
    }

    #[test]
    fn the_soft_limit_moves_within_the_hard_one() {
        let (soft, hard) = nofile_limit().unwrap();
        assert_eq!(
            set_nofile_soft(soft.saturating_sub(1).max(64)).unwrap(),
            soft.saturating_sub(1).max(64).min(hard)
        );
        assert_eq!(
            set_nofile_soft(u64::MAX).unwrap(),
            hard,
            "clamped to the hard limit"
        );
        assert_eq!(raise_nofile().unwrap(), hard);
        set_nofile_soft(soft).unwrap();
        assert_eq!(nofile_limit().unwrap().0, soft);
    }
}
