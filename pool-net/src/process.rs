//! Process resources an operator of a pool watches: the open-descriptor limit (every
//! pooled connection is a descriptor) and the CPU time the process has used.
//!
//! These are the only `libc` calls outside the socket code, kept here so that no
//! other crate of the workspace needs `unsafe`.

use std::io;
use std::time::Duration;

/// The soft and hard `RLIMIT_NOFILE` of this process.
///
/// ```
/// let (soft, hard) = pool_net::process::nofile_limit().unwrap();
/// assert!(soft <= hard);
/// ```
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which points to
    // `lim`, a live and exclusively borrowed local of exactly that type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft open-descriptor limit, clamped to the hard one; the limit now in force.
/// Lowering it is how a test puts the pool under descriptor pressure.
pub fn set_nofile_soft(soft: u64) -> io::Result<u64> {
    let (_, hard) = nofile_limit()?;
    let want = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `setrlimit` only reads one `rlimit` through the pointer, which points to
    // `want`, a live local of exactly that type. Changing the soft limit within the
    // hard one needs no privilege and affects only this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(want.rlim_cur)
}

/// Raises the soft open-descriptor limit to the hard one; the limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    let (_, hard) = nofile_limit()?;
    set_nofile_soft(hard)
}

/// User plus system CPU time this process has used, all threads together.
///
/// ```
/// let t = pool_net::process::cpu_time().unwrap();
/// assert!(t < std::time::Duration::from_secs(86_400 * 365));
/// ```
pub fn cpu_time() -> io::Result<Duration> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `getrusage` fills the whole `rusage` the pointer points to; `ru` is a
    // live local of exactly that type, borrowed exclusively for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so it initialised every field of `ru`.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
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
