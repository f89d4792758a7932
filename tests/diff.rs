//! `diff` on real sessions: a capture with itself, two runs of one scenario against fresh
//! QEMUs, and the same scenario against a QEMU started differently.

use std::path::{Path, PathBuf};

use qmptap::addr::Addr;
use qmptap::diff::{Entry, diff};
use qmptap::normalize::Normalizer;

use crate::util::{Client, Proxy, Qemu, TempDir};

#[test]
fn every_bundled_capture_is_the_same_as_itself() {
    for name in [
        "migration.jsonl",
        "block-mirror.jsonl",
        "errors-fds-oob.jsonl",
        "libvirt-save.jsonl",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("captures")
            .join(name);
        let report = diff(&path, &path, &Normalizer::default()).unwrap();
        assert!(report.is_same(), "{name}: {report:#?}");
        assert!(report.connections.iter().all(|c| !c.entries.is_empty()));
    }
}

/// One scenario: commands, an error, events, fds; recorded through the proxy.
fn run_scenario(dir: &TempDir, qemu_socket: &Path) -> PathBuf {
    let proxy = Proxy::start(dir, Addr::Unix(qemu_socket.to_owned()));
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    for cmd in [
        r#"{"execute": "query-status", "id": 1}"#,
        r#"{"execute": "query-name", "id": 2}"#,
        r#"{"execute": "stop", "id": 3}"#,
        r#"{"execute": "cont", "id": 4}"#,
        r#"{"execute": "no-such-command", "id": 5}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/machine"}, "id": 6}"#,
    ] {
        c.execute(cmd);
    }
    // Let the events of cont arrive before the session ends.
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    drop(proxy.stop());
    let kept = dir.0.parent().unwrap().join(format!(
        "{}.jsonl",
        dir.0.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(dir.path("capture.jsonl"), &kept).unwrap();
    kept
}

#[test]
fn two_runs_differ_only_where_something_changed() {
    let (d1, d2, d3) = (
        TempDir::new("diff-run1"),
        TempDir::new("diff-run2"),
        TempDir::new("diff-run3"),
    );
    let a = run_scenario(&d1, &Qemu::start(&d1).socket);
    let b = run_scenario(&d2, &Qemu::start(&d2).socket);
    let same = diff(&a, &b, &Normalizer::default()).unwrap();
    assert!(same.is_same(), "{same:#?}");

    // The same scenario against a QEMU with a name: only query-name's reply differs.
    let socket = d3.path("named.sock");
    let _named = Qemu::start_with(
        &socket,
        &[
            "-name",
            "guest7",
            "-qmp",
            &format!("unix:{},server=on,wait=off", socket.display()),
        ],
    );
    let c = run_scenario(&d3, &socket);
    let report = diff(&a, &c, &Normalizer::default()).unwrap();
    let differing: Vec<&Entry> = report
        .connections
        .iter()
        .flat_map(|c| &c.entries)
        .filter(|e| e.differs())
        .collect();
    assert_eq!(differing.len(), 1, "{report:#?}");
    let Entry::ReplyDiffers {
        name, differences, ..
    } = differing[0]
    else {
        panic!("{report:#?}")
    };
    assert_eq!(name.as_deref(), Some("query-name"));
    let paths: Vec<&str> = differences.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["return.name"]);
    for f in [a, b, c] {
        let _ = std::fs::remove_file(f);
    }
}
