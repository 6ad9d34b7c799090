use std::io::Write;

use super::*;

const LIMITS: Limits = Limits { max_bytes: 1 << 20, max_entries: 100 };

/// A tar entry written with a raw name, so hostile names reach the reader unchanged.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    link: &'a str,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw { name, kind: tar::EntryType::Regular, data, link: "" }
}

fn dir(name: &str) -> Raw<'_> {
    Raw { name, kind: tar::EntryType::Directory, data: b"", link: "" }
}

fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        h.set_entry_type(e.kind);
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if !e.link.is_empty() {
            h.as_gnu_mut().unwrap().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_cksum();
        builder.append(&h, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        if name.ends_with('/') {
            w.add_directory(*name, options).unwrap();
        } else {
            w.start_file(*name, options).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// What a reader sees in the repackaged artifact: (path, mode, mtime, contents).
fn listing(p: &Package) -> Vec<(String, u32, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&p.bytes[..]));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), h.mode().unwrap(), h.mtime().unwrap(), data)
        })
        .collect()
}

fn names(p: &Package) -> Vec<String> {
    listing(p).into_iter().map(|(n, ..)| n).collect()
}

fn layout(strip: usize, path: Option<&str>, prefix: Option<&str>) -> Layout {
    Layout {
        strip_components: strip,
        path: path.map(|p| DestinationPath::parse(p).unwrap()),
        prefix: prefix.map(|p| DestinationPath::parse(p).unwrap()),
    }
}

#[test]
fn a_chart_tarball_becomes_a_sorted_normalised_tree() {
    let chart = gz(&tar_of(&[
        file("podinfo/values.yaml", b"replicas: 1\n"),
        file("./podinfo/Chart.yaml", b"name: podinfo\nversion: 6.5.0\n"),
        file("podinfo/templates/deploy.yaml", b"kind: Deployment\n"),
    ]));
    let p = repackage(&chart, &Layout::default(), LIMITS).unwrap();
    let got = listing(&p);
    let shape: Vec<(&str, u32, u64)> = got.iter().map(|(n, m, t, _)| (n.as_str(), *m, *t)).collect();
    assert_eq!(
        shape,
        vec![
            ("podinfo/", 0o755, 0),
            ("podinfo/Chart.yaml", 0o644, 0),
            ("podinfo/templates/", 0o755, 0),
            ("podinfo/templates/deploy.yaml", 0o644, 0),
            ("podinfo/values.yaml", 0o644, 0),
        ]
    );
    assert_eq!(got[1].3, b"name: podinfo\nversion: 6.5.0\n");
    assert_eq!(p.digest, crate::Digest::of(&p.bytes));
}

#[test]
fn the_same_tree_gives_the_same_bytes_whatever_the_container() {
    let files: &[(&str, &[u8])] = &[("b/two.yaml", b"2"), ("a/one.yaml", b"1")];
    let tarred = tar_of(&files.iter().map(|(n, d)| file(n, d)).collect::<Vec<_>>());
    let from_tgz = repackage(&gz(&tarred), &Layout::default(), LIMITS).unwrap();
    let from_tar = repackage(&tarred, &Layout::default(), LIMITS).unwrap();
    let from_zip = repackage(&zip_of(files), &Layout::default(), LIMITS).unwrap();
    assert_eq!(from_tgz.bytes, from_tar.bytes);
    assert_eq!(from_tgz.bytes, from_zip.bytes);
    assert_eq!(names(&from_zip), ["a/", "a/one.yaml", "b/", "b/two.yaml"]);
}

#[test]
fn strip_components_then_path_then_prefix() {
    let release = gz(&tar_of(&[
        file("project-1.2/README.md", b"readme"),
        file("project-1.2/deploy/base/app.yaml", b"app"),
        file("project-1.2/deploy/base/nested/x.yaml", b"x"),
        file("project-1.2/deploy/other.yaml", b"other"),
    ]));
    let p = repackage(&release, &layout(1, Some("deploy/base"), None), LIMITS).unwrap();
    assert_eq!(names(&p), ["app.yaml", "nested/", "nested/x.yaml"]);
    let p = repackage(&release, &layout(2, None, Some("manifests")), LIMITS).unwrap();
    assert_eq!(
        names(&p),
        [
            "manifests/",
            "manifests/base/",
            "manifests/base/app.yaml",
            "manifests/base/nested/",
            "manifests/base/nested/x.yaml",
            "manifests/other.yaml"
        ]
    );
    let err = repackage(&release, &layout(1, Some("charts"), None), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Empty(m) if m.contains("archive.path \"charts\"")), "{err}");
    let err = repackage(&release, &layout(9, None, None), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Empty(m) if m.contains("stripComponents 9")), "{err}");
}

#[test]
fn escapes_are_refused_in_tar_and_zip() {
    for (name, rule) in [
        ("../evil.yaml", "'..'"),
        ("ok/../../evil.yaml", "'..'"),
        ("/etc/cron.d/evil", "absolute"),
        ("a\\..\\evil", "backslash"),
    ] {
        let tarred = tar_of(&[file("fine.yaml", b"x"), file(name, b"x")]);
        let err = repackage(&gz(&tarred), &Layout::default(), LIMITS).unwrap_err();
        assert!(matches!(&err, ArchiveError::UnsafeEntry { entry, .. } if entry == name), "{name}: {err}");
        assert!(err.to_string().contains(rule), "{name}: {err}");
        let err = repackage(&zip_of(&[("fine.yaml", b"x"), (name, b"x")]), &Layout::default(), LIMITS).unwrap_err();
        assert!(matches!(&err, ArchiveError::UnsafeEntry { entry, .. } if entry == name), "zip {name}: {err}");
    }
}

#[test]
fn links_and_devices_are_refused_not_followed() {
    let link = Raw { name: "passwd", kind: tar::EntryType::Symlink, data: b"", link: "/etc/passwd" };
    let err = repackage(&tar_of(&[link]), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Link { entry, target } if entry == "passwd" && target == "/etc/passwd"),
        "{err}"
    );
    let hard = Raw { name: "copy", kind: tar::EntryType::Link, data: b"", link: "fine.yaml" };
    let err = repackage(&tar_of(&[file("fine.yaml", b"x"), hard]), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::Link { .. }), "{err}");
    let fifo = Raw { name: "pipe", kind: tar::EntryType::Fifo, data: b"", link: "" };
    let err = repackage(&tar_of(&[fifo]), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Special { entry, kind } if entry == "pipe" && kind == "fifo"), "{err}");

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.add_symlink("escape", "../../etc/shadow", zip::write::SimpleFileOptions::default()).unwrap();
    let zipped = w.finish().unwrap().into_inner();
    let err = repackage(&zipped, &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Link { entry, target } if entry == "escape" && target == "../../etc/shadow"),
        "{err}"
    );
}

#[test]
fn bombs_stop_at_the_caps() {
    // 64 MiB of zeros gzip to about 64 KiB; the cap is 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = gz(&tar_of(&[file("zeros", &zeros)]));
    assert!(bomb.len() < 1 << 20);
    let err = repackage(&bomb, &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit } if limit == 1 << 20), "{err}");
    let err = repackage(&zip_of(&[("zeros", &zeros)]), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    // Many small files add up against the same budget.
    let chunk = vec![b'x'; 300 << 10];
    let many: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    let entries: Vec<Raw<'_>> = many.iter().map(|n| file(n, &chunk)).collect();
    let err = repackage(&gz(&tar_of(&entries)), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");

    let count: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
    let entries: Vec<Raw<'_>> = count.iter().map(|n| file(n, b"")).collect();
    let err = repackage(&gz(&tar_of(&entries)), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooManyEntries { limit: 100 }), "{err}");
    let files: Vec<(&str, &[u8])> = count.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let err = repackage(&zip_of(&files), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooManyEntries { limit: 100 }), "{err}");
}

#[test]
fn ambiguous_trees_are_refused() {
    let err =
        repackage(&tar_of(&[file("a.yaml", b"1"), file("./a.yaml", b"2")]), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Duplicate { entry } if entry == "./a.yaml"), "{err}");
    let err = repackage(&tar_of(&[file("a", b"1"), file("a/b", b"2")]), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Duplicate { entry } if entry == "a"), "{err}");
    // A directory named twice is fine: tar tools do it.
    let p = repackage(&tar_of(&[dir("d/"), dir("./d"), file("d/x", b"1")]), &Layout::default(), LIMITS).unwrap();
    assert_eq!(names(&p), ["d/", "d/x"]);
}

#[test]
fn what_is_not_an_archive_says_what_it_starts_with() {
    let err = repackage(b"{\"json\": true}", &Layout::default(), LIMITS).unwrap_err();
    assert_eq!(err.to_string(), "is not a gzip tarball, a tar or a zip archive (it starts with bytes 7b 22 6a 73)");
    let err = repackage(b"", &Layout::default(), LIMITS).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = repackage(&[0x1f, 0x8b, 8, 0, 1, 2, 3], &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
}
