//! Backup → restore → `qemu-img compare`, for every image format and kind of data, and for
//! incrementals after random writes made with `qemu-io`.

mod common;

use std::path::Path;

use common::{Harness, identical, number, random_writes, text};

/// Backs up one test image and restores it in its own format, bit-exact.
fn round_trip(name: &str) {
    let harness = Harness::new();
    let image = harness.copy_image(name);
    let report = harness.backup("vm", &[&image]);
    assert_eq!(report["disks"][0]["name"], name);
    let target = harness.path("restored");
    let restored = harness.restore(&text(&report, "point"), &target, &[]);
    let path = Path::new(restored["disks"][0]["path"].as_str().unwrap()).to_path_buf();
    assert_eq!(
        path,
        target.join(name),
        "the restored disk keeps its file name"
    );
    assert!(
        identical(&image, &path),
        "{name} restored with different content"
    );
}

#[test]
fn raw_filesystem_round_trips() {
    round_trip("fs.raw");
}

#[test]
fn qcow2_round_trips() {
    round_trip("fs.qcow2");
}

#[test]
fn compressed_qcow2_round_trips() {
    round_trip("fs-compressed.qcow2");
}

#[test]
fn qcow2_with_a_backing_file_round_trips_with_its_backing_data() {
    round_trip("overlay.qcow2");
}

#[test]
fn fixed_vhd_round_trips() {
    round_trip("fs-fixed.vhd");
}

#[test]
fn dynamic_vhd_round_trips() {
    round_trip("fs-dynamic.vhd");
}

#[test]
fn vhdx_round_trips() {
    round_trip("fs.vhdx");
}

#[test]
fn random_data_round_trips() {
    round_trip("random.raw");
}

#[test]
fn repeated_blocks_round_trip() {
    round_trip("repeated.raw");
    round_trip("repeated-4k.raw");
}

#[test]
fn a_size_that_is_not_a_multiple_of_the_chunk_size_round_trips() {
    round_trip("odd-size.raw");
}

#[test]
fn zeros_are_never_stored_and_restore_sparse() {
    let harness = Harness::new();
    let sparse = harness.copy_image("zeros-sparse.raw");
    let written = harness.copy_image("zeros-written.raw");
    let report = harness.backup("zeros", &[&sparse, &written]);
    assert_eq!(
        number(&report, "bytes_new"),
        0,
        "zero chunks are never stored"
    );
    assert_eq!(
        number(&report["disks"][0], "bytes_read"),
        0,
        "holes are not even read"
    );
    let target = harness.path("restored");
    harness.restore(&text(&report, "point"), &target, &[]);
    for name in ["zeros-sparse.raw", "zeros-written.raw"] {
        let restored = target.join(name);
        assert!(identical(&harness.path(name), &restored));
        let metadata = std::fs::metadata(&restored).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            metadata.blocks(),
            0,
            "{name} restored without allocating any block"
        );
    }
}

#[test]
fn repeated_data_is_stored_once() {
    let harness = Harness::new();
    let image = harness.copy_image("repeated.raw");
    let report = harness.backup("repeat", &[&image]);
    // 256 copies of one 64 KiB block: one chunk is new.
    assert_eq!(number(&report, "bytes_read"), 16 << 20);
    assert_eq!(number(&report, "bytes_new"), 65536);
}

#[test]
fn identical_data_in_another_vm_is_deduplicated() {
    let harness = Harness::new();
    let first = harness.copy_image("fs.qcow2");
    let second = harness.path("copy.raw");
    common::copy_sparse(&common::images().join("fs.raw"), &second);
    let report = harness.backup("one", &[&first]);
    assert!(number(&report, "bytes_new") > 10 << 20);
    let report = harness.backup("two", &[&second]);
    assert_eq!(
        number(&report, "bytes_new"),
        0,
        "the same filesystem as raw adds nothing"
    );
}

#[test]
fn restores_convert_between_formats() {
    let harness = Harness::new();
    let qcow2 = harness.copy_image("fs.qcow2");
    let vhd = harness.copy_image("fs-dynamic.vhd");
    let point = text(&harness.backup("convert", &[&qcow2, &vhd]), "point");
    for (format, names) in [
        ("raw", ["fs.raw", "fs-dynamic.raw"]),
        ("qcow2", ["fs.qcow2", "fs-dynamic.qcow2"]),
        ("vhd", ["fs.vhd", "fs-dynamic.vhd"]),
        ("vhdx", ["fs.vhdx", "fs-dynamic.vhdx"]),
    ] {
        let target = harness.path(&format!("as-{format}"));
        let report = harness.restore(&point, &target, &["--format", format]);
        assert_eq!(report["disks"][0]["format"], format);
        for name in names {
            assert!(
                identical(&qcow2, &target.join(name)),
                "{name} differs after conversion to {format}"
            );
        }
    }
}

#[test]
fn one_point_holds_every_disk_of_a_vm() {
    let harness = Harness::new();
    let system = harness.copy_image("fs.qcow2");
    let data = harness.copy_image("random.raw");
    let report = harness.backup("db1", &[&system, &data]);
    let points = harness.points();
    assert_eq!(points.len(), 1);
    let disks = points[0]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["name"], "fs.qcow2");
    assert_eq!(disks[0]["format"], "qcow2");
    assert_eq!(disks[0]["virtual_size_bytes"], 64 << 20);
    assert_eq!(disks[1]["name"], "random.raw");
    assert_eq!(points[0]["consistency"], "crash");
    assert_eq!(points[0]["vm"], "db1");
    let target = harness.path("restored");
    harness.restore(&text(&report, "point"), &target, &[]);
    assert!(identical(&system, &target.join("fs.qcow2")));
    assert!(identical(&data, &target.join("random.raw")));
}

/// Backs up, makes random writes with qemu-io, backs up again; both points restore to
/// exactly what the disk held at their time. Returns the second backup's report.
fn incremental_after_random_writes(name: &str) -> serde_json::Value {
    let harness = Harness::new();
    let image = harness.copy_image(name);
    let before = harness.path(&format!("before-{name}"));
    common::copy_sparse(&image, &before);
    let first = harness.backup("vm", &[&image]);
    random_writes(&image, 100, 7);
    let second = harness.backup("vm", &[&image]);
    assert_eq!(
        second["parent"], first["point"],
        "the second point is incremental from the first"
    );
    assert!(!identical(&before, &image), "the writes changed the disk");
    for (report, expected) in [(&first, &before), (&second, &image)] {
        let target = harness.path(&format!("restored-{}", text(report, "point")));
        harness.restore(&text(report, "point"), &target, &[]);
        assert!(
            identical(expected, &target.join(name)),
            "{name}: a point restored different content"
        );
    }
    // Only chunks that changed are new: at most one 64 KiB chunk per 4 KiB write.
    assert!(number(&second, "bytes_new") <= 100 * 65536, "{second}");
    assert!(number(&second, "bytes_new") > 0);
    second
}

#[test]
fn qcow2_incrementals_read_only_what_the_dirty_bitmap_marks() {
    let report = incremental_after_random_writes("fs.qcow2");
    assert_eq!(report["disks"][0]["mode"], "dirty-bitmap");
    assert!(number(&report, "bytes_read") <= 100 * 65536, "{report}");
}

#[test]
fn raw_incrementals_store_only_changed_chunks() {
    let report = incremental_after_random_writes("fs.raw");
    assert_eq!(report["disks"][0]["mode"], "full");
}

#[test]
fn vhd_incrementals_restore_both_points() {
    incremental_after_random_writes("fs-dynamic.vhd");
}

#[test]
fn vhdx_incrementals_restore_both_points() {
    incremental_after_random_writes("fs.vhdx");
}

#[test]
fn an_unchanged_raw_disk_is_not_read_again() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    harness.backup("vm", &[&image]);
    let second = harness.backup("vm", &[&image]);
    assert_eq!(second["disks"][0]["mode"], "unchanged");
    assert_eq!(number(&second, "bytes_read"), 0);
    let target = harness.path("restored");
    harness.restore(&text(&second, "point"), &target, &[]);
    assert!(identical(&image, &target.join("random.raw")));
}

#[test]
fn full_reads_everything_and_leaves_no_bitmap() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    harness.ok(&["backup", "--vm", "vm", "--full", image.to_str().unwrap()]);
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&info.stdout).contains("lifeboat-"),
        "--full leaves the image untouched"
    );
    random_writes(&image, 10, 3);
    let report = harness.json(&["backup", "--vm", "vm", "--full", image.to_str().unwrap()]);
    assert_eq!(report["disks"][0]["mode"], "full");
}
