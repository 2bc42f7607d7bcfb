//! CPU work with names a profiler must find: a loop in a function of this binary
//! (`crunch_numbers`) and SHA-256 in the system's libcrypto (loaded with dlopen, so the demo app
//! links nothing it does not always have).

use std::{
    ffi::{CStr, c_void},
    time::{Duration, Instant},
};

type Sha256 = unsafe extern "C" fn(data: *const u8, len: usize, out: *mut u8) -> *mut u8;

/// libcrypto's one-shot `SHA256`, if the library is there.
fn sha256() -> Option<Sha256> {
    const LIBRARY: &CStr = c"libcrypto.so.3";
    const SYMBOL: &CStr = c"SHA256";
    // SAFETY: dlopen and dlsym are given NUL-terminated names; a null result is checked. The
    // handle is never closed, so the function pointer stays valid for the process's life.
    unsafe {
        let handle = libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW);
        if handle.is_null() {
            return None;
        }
        let symbol: *mut c_void = libc::dlsym(handle, SYMBOL.as_ptr());
        (!symbol.is_null()).then(|| std::mem::transmute::<*mut c_void, Sha256>(symbol))
    }
}

/// Spends about `total` of CPU, half in [`crunch_numbers`] and half hashing with libcrypto
/// (all of it in `crunch_numbers` when libcrypto is missing). Returns a checksum.
pub fn crunch(total: Duration) -> u64 {
    let hash = sha256();
    let start = Instant::now();
    let mut checksum = 0u64;
    let buffer = vec![7u8; 64 * 1024];
    let mut digest = [0u8; 32];
    while start.elapsed() < total {
        checksum = crunch_numbers(checksum, 200_000);
        if let Some(hash) = hash {
            // SAFETY: the buffer and digest outlive the call and have the sizes given.
            unsafe { hash(buffer.as_ptr(), buffer.len(), digest.as_mut_ptr()) };
            checksum ^= u64::from(digest[0]);
        }
    }
    checksum
}

/// A fixed amount of work: `n` calls of [`crunch_numbers`].
pub fn rounds(n: u64) -> u64 {
    (0..n).fold(0, |checksum, _| crunch_numbers(checksum, 200_000))
}

/// A loop the optimizer cannot remove, in a function it does not inline.
#[inline(never)]
pub fn crunch_numbers(seed: u64, rounds: u64) -> u64 {
    let mut x = seed | 1;
    for i in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        x ^= x >> 29;
    }
    x
}
