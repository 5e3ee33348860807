//! Running out of file descriptors: telling EMFILE/ENFILE from other
//! errors, backing an accept loop off while they last, and a few
//! descriptors held in reserve for the admin server so that `/ready` and
//! `/stats` still answer when the data path has used every other one.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

/// Descriptors the admin server keeps in reserve.
const ADMIN_RESERVE: usize = 4;

/// The admin server's reserve: open `/dev/null` descriptors, released one
/// at a time when its accept fails for lack of descriptors.
static RESERVE: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// The label of an error caused by the process or system descriptor limit
/// (`emfile`, `enfile`), or `None` for any other error.
pub fn exhaustion(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::EMFILE) => Some("emfile"),
        Some(libc::ENFILE) => Some("enfile"),
        _ => None,
    }
}

/// Fills the admin reserve up to `ADMIN_RESERVE` (as far as descriptors
/// allow; called at start and after each admin connection).
pub fn refill_reserve() {
    let mut r = RESERVE.lock().unwrap_or_else(|p| p.into_inner());
    while r.len() < ADMIN_RESERVE {
        match std::fs::File::open("/dev/null") {
            Ok(f) => r.push(f.into()),
            Err(_) => break,
        }
    }
}

/// Gives one reserved descriptor back to the system so that the admin's
/// next accept can have it; `false` if the reserve is empty.
pub fn release_one() -> bool {
    RESERVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .is_some()
}

/// The back-off of an accept loop after failures in a row: 10 ms doubling
/// to one second, so that a loop out of descriptors neither spins nor
/// logs every few milliseconds.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_apart() {
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(exhaustion(&e), Some("emfile"));
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(exhaustion(&e), None);
        assert_eq!(accept_backoff(0), Duration::from_millis(10));
        assert_eq!(accept_backoff(30), Duration::from_secs(1));
    }
}
