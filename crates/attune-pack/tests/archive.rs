//! Building the normalized archive and loading uploaded archives in memory, including every
//! kind of hostile entry and the size limits.

mod common;

use attune_pack::{build_pack_archive, load_pack_archive, load_pack_dir, PackError, PackLimits};
use common::{demo_archive_with, pack_dir, RawEntry, ACTION_YAML, PACK_YAML};
use std::io::Read;

fn archive_error(bytes: &[u8]) -> PackError {
    load_pack_archive(bytes, &PackLimits::default()).expect_err("the archive must be rejected")
}

/// (path, mode, mtime, uid, gid, is_dir) of every entry.
fn entry_summaries(bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64, bool)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .expect("read entries")
        .map(|entry| {
            let entry = entry.expect("read entry");
            let header = entry.header();
            (
                entry
                    .path()
                    .expect("entry path")
                    .to_string_lossy()
                    .into_owned(),
                header.mode().expect("mode"),
                header.mtime().expect("mtime"),
                header.uid().expect("uid"),
                header.gid().expect("gid"),
                header.entry_type().is_dir(),
            )
        })
        .collect()
}

#[test]
fn built_archive_is_deterministic_and_normalized() {
    let hello = common::hello_pack_dir();
    let first = build_pack_archive(&hello).expect("build archive");
    let second = build_pack_archive(&hello).expect("build archive again");
    assert_eq!(first, second);

    let entries = entry_summaries(&first);
    let paths: Vec<&str> = entries.iter().map(|entry| entry.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "actions/",
            "actions/greet.sh",
            "actions/greet.yaml",
            "actions/quick.sh",
            "actions/quick.yaml",
            "actions/stats.py",
            "actions/stats.yaml",
            "pack.yaml"
        ]
    );
    for (path, mode, mtime, uid, gid, is_dir) in &entries {
        assert_eq!((*mtime, *uid, *gid), (0, 0, 0), "{path}");
        let expected_mode = if *is_dir || path.ends_with(".sh") {
            0o755
        } else {
            0o644
        };
        assert_eq!(*mode, expected_mode, "{path}");
    }
}

#[test]
fn directory_and_its_archive_give_the_same_pack() {
    let hello = common::hello_pack_dir();
    let from_directory = load_pack_dir(&hello).expect("load directory");
    let archive = build_pack_archive(&hello).expect("build archive");
    let from_archive = load_pack_archive(&archive, &PackLimits::default()).expect("load archive");
    assert_eq!(from_directory, from_archive);
    assert_eq!(
        from_directory.to_archive().expect("normalized archive"),
        archive
    );
}

#[test]
fn archive_under_prefix_has_only_the_last_prefix_directory() {
    let pack = load_pack_dir(common::hello_pack_dir()).expect("load pack");
    let archive = pack
        .to_archive_under("/opt/attune/packs/hello/")
        .expect("archive under prefix");
    let paths: Vec<String> = entry_summaries(&archive)
        .into_iter()
        .map(|entry| entry.0)
        .collect();
    assert_eq!(paths[0], "opt/attune/packs/hello/");
    assert_eq!(paths[1], "opt/attune/packs/hello/actions/");
    assert!(paths.contains(&"opt/attune/packs/hello/actions/greet.sh".to_string()));
    assert!(!paths
        .iter()
        .any(|path| path == "opt/" || path == "opt/attune/"));
}

#[test]
fn archives_from_other_tools_are_accepted() {
    let bytes = demo_archive_with(vec![
        RawEntry::Directory("./"),
        RawEntry::File("./actions/lib/util.sh", b"echo util\n", 0o644),
        RawEntry::Symlink("actions/alias.sh", "echo.sh"),
        RawEntry::Symlink("actions/lib/up.sh", "../echo.sh"),
        RawEntry::HardLink("actions/hard.sh", "actions/echo.sh"),
        RawEntry::File(".git/HEAD", b"ref: refs/heads/main\n", 0o644),
        RawEntry::File("actions/__pycache__/x.pyc", b"junk", 0o644),
    ]);
    let pack = load_pack_archive(&bytes, &PackLimits::default()).expect("load archive");
    let paths: Vec<&str> = pack
        .files
        .iter()
        .map(|f| f.relative_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "actions/alias.sh",
            "actions/echo.sh",
            "actions/echo.yaml",
            "actions/hard.sh",
            "actions/lib/up.sh",
            "actions/lib/util.sh",
            "pack.yaml"
        ]
    );
    for linked in ["actions/alias.sh", "actions/hard.sh", "actions/lib/up.sh"] {
        let file = pack
            .files
            .iter()
            .find(|f| f.relative_path == linked)
            .expect(linked);
        assert_eq!(file.contents, b"#!/bin/sh\necho hi\n", "{linked}");
        assert_eq!(file.mode, 0o755, "{linked}");
    }
}

#[test]
fn hostile_entries_are_rejected() {
    let cases: Vec<(RawEntry<'_>, &str)> = vec![
        (
            RawEntry::File("/etc/cron.d/evil", b"x", 0o644),
            "/etc/cron.d/evil: absolute paths are not allowed",
        ),
        (
            RawEntry::File("actions/../../evil", b"x", 0o644),
            "actions/../../evil: paths containing \"..\" are not allowed",
        ),
        (
            RawEntry::CharDevice("actions/null"),
            "actions/null: device files are not allowed",
        ),
        (
            RawEntry::Fifo("actions/pipe"),
            "actions/pipe: fifos are not allowed",
        ),
        (
            RawEntry::Symlink("actions/passwd", "/etc/passwd"),
            "actions/passwd: link points outside the pack (to \"/etc/passwd\")",
        ),
        (
            RawEntry::Symlink("actions/up", "../../outside"),
            "actions/up: link points outside the pack (to \"../../outside\")",
        ),
        (
            RawEntry::HardLink("actions/hard", "../etc/shadow"),
            "actions/hard: link points outside the pack (to \"../etc/shadow\")",
        ),
        (
            RawEntry::Symlink("actions/dangling", "nothing.sh"),
            "actions/dangling: link target \"actions/nothing.sh\" is not a file in the archive",
        ),
        (
            RawEntry::Symlink("actions/dir", "."),
            "actions/dir: links to directories are not supported (to \"actions\")",
        ),
        (
            RawEntry::File("pack.yaml", b"ref: again\n", 0o644),
            "pack.yaml: duplicate entry",
        ),
    ];
    for (entry, message) in cases {
        let error = archive_error(&demo_archive_with(vec![entry]));
        assert!(matches!(error, PackError::UnsafeEntry { .. }), "{error:?}");
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn link_loops_are_rejected() {
    let error = archive_error(&demo_archive_with(vec![
        RawEntry::Symlink("actions/a", "b"),
        RawEntry::Symlink("actions/b", "a"),
    ]));
    assert!(
        error.to_string().ends_with("too many levels of links"),
        "{error}"
    );
}

#[test]
fn archive_over_the_size_limit_is_too_large() {
    let bytes = build_pack_archive(common::hello_pack_dir()).expect("build archive");
    let limits = PackLimits {
        max_archive_bytes: 4096,
        ..PackLimits::default()
    };
    let error = load_pack_archive(&bytes, &limits).expect_err("too large");
    let PackError::TooLarge { size, limit } = error else {
        panic!("expected TooLarge, got {error:?}");
    };
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(limit, 4096);

    let oversized = vec![0_u8; 16 * 1024 * 1024 + 1];
    assert!(matches!(
        archive_error(&oversized),
        PackError::TooLarge {
            limit: 16_777_216,
            ..
        }
    ));
}

#[test]
fn file_count_and_unpacked_size_are_limited() {
    let bytes = demo_archive_with(vec![]);
    let limits = PackLimits {
        max_files: 2,
        ..PackLimits::default()
    };
    let error = load_pack_archive(&bytes, &limits).expect_err("too many files");
    assert_eq!(error.to_string(), "pack has more than 2 files");

    let limits = PackLimits {
        max_unpacked_bytes: 100,
        ..PackLimits::default()
    };
    let error = load_pack_archive(&bytes, &limits).expect_err("too big unpacked");
    assert!(
        matches!(error, PackError::UnpackedTooLarge { limit: 100, .. }),
        "{error:?}"
    );

    let directory = pack_dir(&[
        ("pack.yaml", PACK_YAML, 0o644),
        ("actions/echo.yaml", ACTION_YAML, 0o644),
        ("actions/echo.sh", "echo\n", 0o755),
    ]);
    let error = attune_pack::load_pack_dir_with_limits(directory.path(), &limits)
        .expect_err("directory too big");
    assert!(
        matches!(error, PackError::UnpackedTooLarge { limit: 100, .. }),
        "{error:?}"
    );
}

#[test]
fn bytes_that_are_not_a_tar_are_refused() {
    let error = archive_error(b"");
    assert_eq!(
        error.to_string(),
        "upload is not a tar archive: the upload is empty"
    );

    let error = archive_error(b"hello, this is not an archive");
    assert!(matches!(error, PackError::NotAnArchive(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("upload is not a tar archive: "),
        "{error}"
    );

    let error = archive_error(&[b'x'; 2048]);
    assert!(matches!(error, PackError::NotAnArchive(_)), "{error:?}");

    let mut gzip = vec![0x1f, 0x8b, 0x08, 0x00];
    gzip.resize(1024, 0);
    assert_eq!(
        archive_error(&gzip).to_string(),
        "upload is not a tar archive: it is gzip-compressed; send an uncompressed tar"
    );
}

#[test]
fn empty_tar_has_no_manifest() {
    let bytes = tar::Builder::new(Vec::new())
        .into_inner()
        .expect("empty tar");
    assert!(matches!(archive_error(&bytes), PackError::MissingManifest));
}

#[test]
fn archive_modes_are_kept_without_special_bits() {
    let bytes = demo_archive_with(vec![RawEntry::File("actions/suid.sh", b"x", 0o4755)]);
    let pack = load_pack_archive(&bytes, &PackLimits::default()).expect("load archive");
    let file = pack
        .files
        .iter()
        .find(|f| f.relative_path == "actions/suid.sh")
        .expect("file present");
    assert_eq!(file.mode, 0o755);

    let rebuilt = pack.to_archive().expect("rebuild");
    let mut archive = tar::Archive::new(rebuilt.as_slice());
    let mut found = false;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").to_string_lossy() == "actions/echo.sh" {
            let mut contents = String::new();
            entry.read_to_string(&mut contents).expect("read contents");
            assert_eq!(contents, "#!/bin/sh\necho hi\n");
            found = true;
        }
    }
    assert!(found, "actions/echo.sh is in the rebuilt archive");
}
