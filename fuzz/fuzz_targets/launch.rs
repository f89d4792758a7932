//! Arbitrary QEMU command lines (arguments split at NUL bytes) through the monitor finder:
//! it must never panic, and moving a monitor must leave a command line on which the same
//! monitors are found, that one now at the private socket, every other argument untouched.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qmptap::addr::Addr;
use qmptap::launch::{daemonizes, guest_name, monitors, move_monitor};

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let _ = guest_name(&args);
    let _ = daemonizes(&args);
    let Ok(found) = monitors(&args) else {
        return;
    };
    let private = Path::new("/run/q,m.sock");
    for monitor in &found {
        let moved = move_monitor(&args, monitor, private);
        assert_eq!(moved.len(), args.len());
        for (i, (a, b)) in args.iter().zip(&moved).enumerate() {
            assert!(i == monitor.arg || a == b, "argument {i} changed");
        }
        let again = monitors(&moved).expect("a moved command line parses");
        assert_eq!(again.len(), found.len(), "monitors lost or added");
        let at = again
            .iter()
            .find(|m| m.arg == monitor.arg)
            .expect("the moved monitor is still found");
        assert_eq!(at.listen, Addr::Unix(private.to_owned()));
    }
});
