//! Replay against real QEMU processes started the way the recordings were made: the bundled
//! captures replay with no difference, and a changed QEMU command line shows up as exactly the
//! replies it changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qmptap::addr::Addr;
use qmptap::normalize::Normalizer;
use qmptap::replay::Pace;
use qmptap::replay::client::{Options, Report, replay};

use crate::util::{Client, MigrationPair, Proxy, Qemu, TempDir, spawn, wait_for_monitor};

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures")
        .join(name)
}

fn options(target: &Path) -> Options {
    Options {
        target: Addr::Unix(target.to_owned()),
        conns: Vec::new(),
        pace: Pace::Asap,
        timeout: Duration::from_secs(20),
        normalizer: Normalizer::default(),
        rewrites: Vec::new(),
    }
}

fn assert_clean(report: &Report) {
    assert!(report.is_clean(), "{report:#?}");
    assert!(report.connections.iter().all(|c| c.matched > 0));
}

/// The directory a capture's recorded files were in (the recording scripts use a temporary
/// one): replays rewrite it to their own.
fn recorded_dir(capture_name: &str, command: &str, pointer: &str) -> PathBuf {
    let text = std::fs::read_to_string(capture(capture_name)).unwrap();
    let value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["name"] == command)
        .unwrap_or_else(|| panic!("no {command} in {capture_name}"));
    let path = value["json"]
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap();
    PathBuf::from(path.trim_start_matches("unix:"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn the_errors_capture_replays_clean_against_a_fresh_qemu() {
    let dir = TempDir::new("replay-errors");
    let socket = dir.path("qmp.sock");
    // Two more open files than at recording time: the fresh QEMU's `add-fd` hands out
    // another descriptor number, which replay must carry into `remove-fd`.
    let qemu = Qemu::start_with(
        &socket,
        &[
            "-qmp",
            &format!("unix:{},server=on,wait=off", socket.display()),
            "-chardev",
            "file,id=pad1,path=/dev/null",
            "-chardev",
            "file,id=pad2,path=/dev/null",
        ],
    );
    assert_clean(&replay(&capture("errors-fds-oob.jsonl"), &options(&qemu.socket)).unwrap());
}

#[test]
fn the_migration_capture_replays_clean_against_two_fresh_qemus() {
    let dir = TempDir::new("replay-migration");
    // The recording migrated to a socket in its own temporary directory: point it at ours.
    let recorded = recorded_dir("migration.jsonl", "migrate", "/arguments/uri");
    let pair = MigrationPair::start(&dir);
    // Recorded pace: the polls see the migration as it progresses, as they did.
    let mut o = options(&pair.src_socket);
    o.pace = Pace::Scaled(1.0);
    o.rewrites = vec![(recorded.display().to_string(), dir.0.display().to_string())];
    assert_clean(&replay(&capture("migration.jsonl"), &o).unwrap());
}

#[test]
fn the_block_mirror_capture_replays_clean_against_a_fresh_storage_daemon() {
    let dir = TempDir::new("replay-mirror");
    // The recording's images were in its own temporary directory: ours are in `dir`.
    let recorded = recorded_dir(
        "block-mirror.jsonl",
        "blockdev-add",
        "/arguments/file/filename",
    );
    let run = |cmd: &mut Command| {
        assert!(
            cmd.status()
                .expect("qemu-img and qemu-io (apt-get install qemu-utils)")
                .success()
        );
    };
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path("src.qcow2"))
        .arg("64M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x55 0 32M"])
        .arg(dir.path("src.qcow2"))
        .stdout(Stdio::null()));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path("tgt.qcow2"))
        .arg("64M"));
    let socket = dir.path("qsd.sock");
    let _qsd = spawn(
        Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=m",
                socket.display()
            ))
            .args(["--monitor", "chardev=m"]),
    );
    wait_for_monitor(&socket);
    let mut o = options(&socket);
    o.pace = Pace::Scaled(1.0);
    o.rewrites = vec![(recorded.display().to_string(), dir.0.display().to_string())];
    assert_clean(&replay(&capture("block-mirror.jsonl"), &o).unwrap());
}

/// Record a session with a device, replay it against a QEMU without the device: exactly the
/// replies that describe the device differ.
#[test]
fn a_device_left_out_shows_as_exactly_the_replies_that_differ() {
    let dir = TempDir::new("replay-device");
    let with_device = [
        "-machine",
        "pc,accel=tcg",
        "-S",
        "-device",
        "virtio-rng-pci,id=rng0",
    ];
    let start = |extra: &[&str], name: &str| {
        let socket = dir.path(name);
        let child = spawn(
            Command::new("qemu-system-x86_64")
                .args(["-nodefaults", "-display", "none"])
                .args(if extra.is_empty() {
                    &["-machine", "pc,accel=tcg", "-S"][..]
                } else {
                    extra
                })
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display())),
        );
        wait_for_monitor(&socket);
        (child, socket)
    };
    let (_recorded, socket) = start(&with_device, "recorded.sock");
    let proxy = Proxy::start(&dir, Addr::Unix(socket));
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    for cmd in [
        r#"{"execute": "query-status"}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/rng0", "property": "type"}}"#,
        r#"{"execute": "query-name"}"#,
    ] {
        c.execute(cmd);
    }
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    drop(proxy.stop());
    let recording = dir.path("capture.jsonl");

    let (_same, same) = start(&with_device, "same.sock");
    assert_clean(&replay(&recording, &options(&same)).unwrap());

    let (_without, without) = start(&[], "without.sock");
    let report = replay(&recording, &options(&without)).unwrap();
    let c = &report.connections[0];
    let differing: Vec<&str> = c
        .differing
        .iter()
        .map(|d| d.name.as_deref().unwrap())
        .collect();
    assert_eq!(differing, ["qom-list", "qom-get"], "{report:#?}");
    // qom-list lost exactly the device's entry; qom-get an error instead of the type.
    let lost: Vec<String> = c.differing[0]
        .differences
        .iter()
        .filter_map(|d| d.left.as_ref().map(ToString::to_string))
        .collect();
    assert!(
        lost.iter().all(|v| v.contains("rng0")) && !lost.is_empty(),
        "{lost:?}"
    );
    let paths: Vec<&str> = c.differing[1]
        .differences
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    assert_eq!(paths, ["return", "error"]);
    assert!(
        c.missing.is_empty() && c.unexpected.is_empty(),
        "{report:#?}"
    );
}

/// libvirt's own session (`captures/libvirt-save.jsonl`: ~420 commands, `getfd` with libvirt's
/// fd, `virsh save` as a migration to it) against a fresh QEMU started with the command line
/// libvirt gave the recorded one (captures/README.md), monitor and secret file moved to the
/// test's directory. The migration goes to replay's read-write /dev/null substitute.
#[test]
fn the_libvirt_capture_replays_clean_against_qemu_started_as_libvirt_did() {
    let dir = TempDir::new("replay-libvirt");
    let socket = dir.path("monitor.sock");
    let key = dir.path("master-key.aes");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let secret = format!(
        r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{}"}}"#,
        key.display()
    );
    let chardev = format!(
        "socket,id=charmonitor,path={},server=on,wait=off",
        socket.display()
    );
    let _qemu = spawn(Command::new(crate::util::qemu_binary()).args([
        "-name",
        "guest=qmptap-demo,debug-threads=on",
        "-S",
        "-object",
        &secret,
        "-machine",
        "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-m",
        "64",
        "-object",
        r#"{"qom-type":"memory-backend-ram","id":"pc.ram","size":67108864}"#,
        "-overcommit",
        "mem-lock=off",
        "-smp",
        "1,sockets=1,cores=1,threads=1",
        "-display",
        "none",
        "-no-user-config",
        "-nodefaults",
        "-chardev",
        &chardev,
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "-rtc",
        "base=utc",
        "-no-shutdown",
        "-no-acpi",
        "-boot",
        "strict=on",
        "-audiodev",
        r#"{"id":"audio1","driver":"none"}"#,
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-msg",
        "timestamp=on",
    ]));
    wait_for_monitor(&socket);
    // query-chardev names the monitor's socket: the recording's was wrap's private one.
    let recorded = qmptap::capture::Reader::open(&capture("libvirt-save.jsonl"))
        .unwrap()
        .header()
        .upstream
        .clone()
        .unwrap();
    let mut o = options(&socket);
    o.rewrites = vec![(
        recorded.trim_start_matches("unix:").to_owned(),
        socket.display().to_string(),
    )];
    let report = replay(&capture("libvirt-save.jsonl"), &o).unwrap();
    assert_clean(&report);
    assert!(report.connections[0].matched > 400, "{report:#?}");
}
