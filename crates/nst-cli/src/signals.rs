//! SIGINT and SIGTERM during a render: the first asks the render to stop after the current
//! iteration (the driver writes the image and the checkpoint); a second exits at once,
//! removing the temporary file being written, so no half-written file is ever left.

#[cfg(unix)]
mod imp {
    use std::ffi::{c_char, c_int, CString};
    use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

    /// The first signal received (0: none).
    static FIRST: AtomicI32 = AtomicI32::new(0);
    /// The NUL-terminated path of the temporary file being written, or null.
    static TEMP: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

    extern "C" fn handle(sig: c_int) {
        if FIRST
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
        let temp = TEMP.load(Ordering::SeqCst);
        // SAFETY: `unlink` and `_exit` are async-signal-safe; `temp` is null or a string that
        // is never freed (see `writing`).
        unsafe {
            if !temp.is_null() {
                libc::unlink(temp);
            }
            libc::_exit(128 + sig);
        }
    }

    pub(crate) fn install() {
        let handler: extern "C" fn(c_int) = handle;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed `sigaction` is a valid empty one; the handler only touches
            // atomics and calls async-signal-safe functions.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    }

    pub(crate) fn received() -> Option<i32> {
        match FIRST.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub(crate) fn name(sig: i32) -> &'static str {
        match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        }
    }

    /// Registers `path` as the file being written until the guard drops. The string is
    /// leaked on purpose: the handler may read it at any moment, so it is never freed (a few
    /// bytes per file written).
    pub(crate) fn writing(path: &std::path::Path) -> Guard {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            TEMP.store(c.into_raw(), Ordering::SeqCst);
        }
        Guard
    }

    pub(crate) struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            TEMP.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

#[cfg(not(unix))]
mod imp {
    pub(crate) fn install() {}
    pub(crate) fn received() -> Option<i32> {
        None
    }
    pub(crate) fn name(_sig: i32) -> &'static str {
        "a signal"
    }
    pub(crate) fn writing(_path: &std::path::Path) -> Guard {
        Guard
    }
    pub(crate) struct Guard;
}

pub(crate) use imp::{install, name, received, writing};
