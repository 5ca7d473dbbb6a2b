//! A closed stdout ends a command quietly, as `| head`, `| grep -q` and pagers expect.
//!
//! Rust starts programs with SIGPIPE ignored, so `println!` to a pipe nobody reads any more
//! panics ("failed printing to stdout: Broken pipe") with a backtrace hint and exit code 101.
//! Restoring the default action lets the kernel end the process at that write, as it does for
//! C tools. Not for `serve`: it goes on running after whoever started it stops reading its
//! stdout (its sockets send with MSG_NOSIGNAL, so only stdout could raise the signal).

/// Restores SIGPIPE's default action for this process.
pub fn exit_quietly_on_closed_stdout() {
    // SAFETY: sets the disposition of one signal at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
