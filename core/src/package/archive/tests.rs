use std::io::{Cursor, Write};

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
    assert!(matches!(&err, ArchiveError::TooManyEntries { entry, limit: 100 } if entry == "f100"), "{err}");
    // A zip says how many entries it holds in its end record: refused from there.
    let files: Vec<(&str, &[u8])> = count.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let err = repackage(&zip_of(&files), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::DeclaredTooMany { record: "end of central directory record", count: 101, limit: 100 }
        ),
        "{err}"
    );
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

fn le16(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&(v as u16).to_le_bytes());
}
fn le32(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&(v as u32).to_le_bytes());
}
fn le64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A zip assembled record by record, so a test can make any part of it lie.
#[derive(Default)]
struct RawZip {
    body: Vec<u8>,
    central: Vec<u8>,
    records: u64,
}

impl RawZip {
    /// A stored entry: local header and data, and its central directory record. `declared`
    /// overrides the size and CRC the records give (as `(size, crc)`).
    fn stored(&mut self, name: &[u8], data: &[u8], declared: Option<(u64, u32)>) -> &mut Self {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let (size, crc) = declared.unwrap_or((data.len() as u64, crc.sum()));
        let offset = self.body.len() as u64;
        let b = &mut self.body;
        b.extend_from_slice(b"PK\x03\x04");
        for v in [20, 0, 0, 0, 0] {
            le16(b, v);
        }
        le32(b, crc as u64);
        le32(b, size);
        le32(b, size);
        le16(b, name.len() as u64);
        le16(b, 0);
        b.extend_from_slice(name);
        b.extend_from_slice(data);
        self.record(name, size, crc, offset, &[])
    }

    /// A central directory record alone (3 << 8: made on Unix, regular file 0644).
    fn record(&mut self, name: &[u8], size: u64, crc: u32, offset: u64, extra: &[u8]) -> &mut Self {
        let c = &mut self.central;
        c.extend_from_slice(b"PK\x01\x02");
        for v in [3 << 8 | 20, 20, 0, 0, 0, 0] {
            le16(c, v);
        }
        le32(c, crc as u64);
        le32(c, size);
        le32(c, size);
        for v in [name.len() as u64, extra.len() as u64, 0, 0, 0] {
            le16(c, v);
        }
        le32(c, 0o100644 << 16);
        le32(c, offset);
        c.extend_from_slice(name);
        c.extend_from_slice(extra);
        self.records += 1;
        self
    }

    /// The archive, its end record declaring `count` records and a directory of `size` bytes
    /// (the true ones when `None`); with `zip64`, those go in a zip64 end record and the classic
    /// one says to look there.
    fn finish(&self, count: Option<u64>, size: Option<u64>, zip64: bool) -> Vec<u8> {
        let (count, size) = (count.unwrap_or(self.records), size.unwrap_or(self.central.len() as u64));
        let mut out = self.body.clone();
        let offset = out.len() as u64;
        out.extend_from_slice(&self.central);
        if zip64 {
            let at = out.len() as u64;
            out.extend_from_slice(b"PK\x06\x06");
            le64(&mut out, 44);
            le16(&mut out, 45);
            le16(&mut out, 45);
            le32(&mut out, 0);
            le32(&mut out, 0);
            le64(&mut out, count);
            le64(&mut out, count);
            le64(&mut out, size);
            le64(&mut out, offset);
            out.extend_from_slice(b"PK\x06\x07");
            le32(&mut out, 0);
            le64(&mut out, at);
            le32(&mut out, 1);
        }
        out.extend_from_slice(b"PK\x05\x06");
        le16(&mut out, 0);
        le16(&mut out, 0);
        let (c16, s32, o32) = if zip64 { (0xffff, 0xffff_ffff, 0xffff_ffff) } else { (count, size, offset) };
        le16(&mut out, c16);
        le16(&mut out, c16);
        le32(&mut out, s32);
        le32(&mut out, o32);
        le16(&mut out, 0);
        out
    }
}

#[test]
fn hand_assembled_zips_and_zip64_end_records_are_read() {
    let mut zip = RawZip::default();
    zip.stored(b"app/a.yaml", b"a: 1\n", None).stored(b"app/b.yaml", b"b: 2\n", None);
    for zip64 in [false, true] {
        let p = repackage(&zip.finish(None, None, zip64), &Layout::default(), LIMITS).unwrap();
        assert_eq!(names(&p), ["app/", "app/a.yaml", "app/b.yaml"], "zip64 {zip64}");
        assert_eq!(listing(&p)[2].3, b"b: 2\n");
    }
    // A zip64 extra field carries the size and offset its record marks as all ones.
    let mut zip = RawZip::default();
    zip.stored(b"big.yaml", b"x: 1\n", None);
    let mut extra = Vec::new();
    le16(&mut extra, 1);
    le16(&mut extra, 16);
    le64(&mut extra, 5);
    le64(&mut extra, 0);
    let crc = {
        let mut c = flate2::Crc::new();
        c.update(b"x: 1\n");
        c.sum()
    };
    zip.central.clear();
    zip.records = 0;
    // Both sizes in the extra field (0xffffffff in the record), the offset too.
    let mut extra3 = Vec::new();
    le16(&mut extra3, 1);
    le16(&mut extra3, 24);
    for v in [5, 5, 0] {
        le64(&mut extra3, v);
    }
    zip.record(b"big.yaml", 0xffff_ffff, crc, 0xffff_ffff, &extra3);
    let p = repackage(&zip.finish(None, None, true), &Layout::default(), LIMITS).unwrap();
    assert_eq!(listing(&p)[0].3, b"x: 1\n");
    // An extra field that lacks what the record says it holds is refused, naming the entry.
    zip.central.clear();
    zip.records = 0;
    zip.record(b"big.yaml", 0xffff_ffff, crc, 0xffff_ffff, &extra);
    let err = repackage(&zip.finish(None, None, true), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::CorruptEntry { entry, .. } if entry == "big.yaml"), "{err}");
}

#[test]
fn a_declared_entry_count_over_the_cap_is_refused_before_any_record_is_read() {
    // The end records claim 60,000 and 200,000 entries over a directory that holds one.
    for (zip64, record) in [(false, "end of central directory record"), (true, "zip64 end of central directory record")]
    {
        let declared = if zip64 { 200_000 } else { 60_000 };
        let zip = RawZip::default().stored(b"a.yaml", b"a", None).finish(Some(declared), None, zip64);
        let err = repackage(&zip, &Layout::default(), LIMITS).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::DeclaredTooMany { record: r, count, limit: 100 } if *r == record && *count == declared),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("declares {declared} entries; the limit is 100")), "{err}");
    }
}

#[test]
fn a_lying_count_or_directory_size_does_not_get_past_the_walk() {
    // 70,000 records behind an end record that says 10.
    let mut zip = RawZip::default();
    zip.stored(b"a.yaml", b"a", None);
    for i in 0..70_000 {
        zip.record(format!("f{i}").as_bytes(), 0, 0, 0, &[]);
    }
    // The true directory size, far over what 10 records may take.
    let err = repackage(&zip.finish(Some(10), None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::DirectoryTooLarge { count: 10, limit, .. } if limit == 10 * 9262), "{err}");
    // A size that lies too: the walk stops at the 11th record.
    let err = repackage(&zip.finish(Some(10), Some(10 * 50), true), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::MoreRecordsThanDeclared { count: 10, .. }), "{err}");
    // Even when the lying size ends exactly where the 10th record does.
    let mut zip = RawZip::default();
    for i in 0..1_000 {
        zip.stored(format!("f{i:07}").as_bytes(), b"", None);
    }
    let err = repackage(&zip.finish(Some(10), Some(10 * 54), false), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::MoreRecordsThanDeclared { count: 10, .. }), "{err}");
    // Fewer records than declared: the missing one is named by its number.
    let mut zip = RawZip::default();
    zip.stored(b"a.yaml", b"a", None);
    let err = repackage(&zip.finish(Some(50), None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(&err, ArchiveError::Corrupt(m) if m.contains("record 2 of 50")), "{err}");
}

#[test]
fn zip_names_and_records_are_measured_before_they_are_used() {
    let long = "d/".repeat(1000) + "x";
    let mut zip = RawZip::default();
    zip.stored(b"fine.yaml", b"x", None).stored(long.as_bytes(), b"x", None);
    let err = repackage(&zip.finish(None, None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::RecordTooLarge { record: "name", entry, size: 2001, limit: 1024 }
            if entry.starts_with("d/d/d/") && entry.len() < 100),
        "{err}"
    );
    let mut zip = RawZip::default();
    zip.stored(b"fine.yaml", b"x", None);
    zip.record(b"padded", 0, 0, 0, &vec![0xaa; 9000]);
    let err = repackage(&zip.finish(None, None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::RecordTooLarge { record: "extra fields and comment", entry, size: 9000, limit: 8192 } if entry == "padded"),
        "{err}"
    );
}

#[test]
fn zip_sizes_and_checksums_that_lie_are_refused() {
    // A stored entry declaring 1 byte, holding 5: its data ends where the record says, and the
    // CRC of that byte is not the one declared.
    let mut zip = RawZip::default();
    zip.stored(b"a.yaml", b"hello", Some((5, 0xdead_beef)));
    let err = repackage(&zip.finish(None, None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::CorruptEntry { entry, reason } if entry == "a.yaml" && reason.contains("CRC-32")),
        "{err}"
    );
    // A declared size over the byte cap is refused before the data is inflated.
    let mut real = zip_of(&[("small", b"12345")]);
    let central = real.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    real[central + 24..central + 28].copy_from_slice(&(2u32 << 20).to_le_bytes());
    let err = repackage(&real, &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit } if limit == 1 << 20), "{err}");
    // Data running past the end of the payload.
    let mut zip = RawZip::default();
    zip.stored(b"a.yaml", b"hello", Some((2 << 20, 0)));
    let err = repackage(&zip.finish(None, None, false), &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::CorruptEntry { entry, reason } if entry == "a.yaml" && reason.contains("past the end")),
        "{err}"
    );
    // A deflate bomb declaring 10 bytes: the inflating stops at the byte cap, not the declaration.
    let zeros = vec![0u8; 8 << 20];
    let mut real = zip_of(&[("zeros", &zeros)]);
    let central = real.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    real[central + 24..central + 28].copy_from_slice(&10u32.to_le_bytes());
    let err = repackage(&real, &Layout::default(), LIMITS).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit } if limit == 1 << 20), "{err}");
    // One declaring more than it holds.
    let mut real = zip_of(&[("small", b"12345")]);
    let central = real.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    real[central + 24..central + 28].copy_from_slice(&9u32.to_le_bytes());
    let err = repackage(&real, &Layout::default(), LIMITS).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::CorruptEntry { entry, reason } if entry == "small" && reason.contains("holds 5 bytes")),
        "{err}"
    );
}

/// A tar whose first record is `kind` (a GNU long name or a PAX header) with `data`, describing
/// a regular file whose own header says `name`.
fn tar_with_record(kind: tar::EntryType, data: &[u8], name: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_cksum();
    builder.append(&h, data).unwrap();
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.set_cksum();
    builder.append(&h, &b"x"[..]).unwrap();
    builder.into_inner().unwrap()
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

#[test]
fn tar_long_names_and_pax_headers_are_measured_before_they_are_buffered() {
    // Long names that override a harmless header name are what is checked.
    let long = "podinfo/".repeat(20) + "values.yaml";
    let p = repackage(
        &tar_with_record(tar::EntryType::GNULongName, format!("{long}\0").as_bytes(), "short"),
        &Layout::default(),
        LIMITS,
    )
    .unwrap();
    assert_eq!(names(&p).last().unwrap(), &long);
    let err =
        repackage(&tar_with_record(tar::EntryType::GNULongName, b"../evil\0", "fine"), &Layout::default(), LIMITS)
            .unwrap_err();
    assert!(matches!(&err, ArchiveError::UnsafeEntry { entry, .. } if entry == "../evil"), "{err}");
    let err = repackage(
        &tar_with_record(tar::EntryType::XHeader, &pax(&[("path", "/etc/evil")]), "fine"),
        &Layout::default(),
        LIMITS,
    )
    .unwrap_err();
    assert!(matches!(&err, ArchiveError::UnsafeEntry { entry, .. } if entry == "/etc/evil"), "{err}");

    // 64 MiB long name (gzipped to about 64 KiB): refused by its header, quoted, never held.
    let huge = vec![b'a'; 64 << 20];
    let bomb = gz(&tar_with_record(tar::EntryType::GNULongName, &huge, "fine"));
    let err = repackage(&bomb, &Layout::default(), Limits { max_bytes: 128 << 20, max_entries: 100 }).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::RecordTooLarge { record: "GNU long-name record", entry, size, limit: 1025 }
            if *size == 64 << 20 && entry.starts_with("aaaa") && entry.len() < 100),
        "{err}"
    );
    let err = repackage(
        &tar_with_record(tar::EntryType::XHeader, &pax(&[("comment", &"c".repeat(20 << 10))]), "fine"),
        &Layout::default(),
        LIMITS,
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::RecordTooLarge { record: "PAX extended header", limit: 16384, .. }), "{err}");
    // A PAX size that disagrees with the header would frame the stream differently: refused.
    let err = repackage(
        &tar_with_record(tar::EntryType::XHeader, &pax(&[("size", "5000")]), "fine"),
        &Layout::default(),
        LIMITS,
    )
    .unwrap_err();
    assert!(matches!(&err, ArchiveError::CorruptEntry { entry, .. } if entry == "fine"), "{err}");
}

#[test]
fn names_and_implied_directories_are_charged_to_the_caps() {
    // 100 entries of 1,000-byte names and no contents: 100 KB of names against a 50 KB cap.
    let deep: Vec<String> = (0..100).map(|i| format!("{i:03}/") + &"d/".repeat(498) + "x").collect();
    let entries: Vec<Raw<'_>> = deep.iter().map(|n| file(n, b"")).collect();
    let tarred = tar_of_long(&entries);
    let err = repackage(&tarred, &Layout::default(), Limits { max_bytes: 50_000, max_entries: 100 }).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit: 50_000 }), "{err}");
    // Each deep entry implies 499 directories: the first one alone is over 100.
    let err = repackage(&tarred, &Layout::default(), Limits { max_bytes: 1 << 30, max_entries: 100 }).unwrap_err();
    // The 101st directory, quoted by its first 64 bytes only.
    let expected = format!("{}…", &format!("000{}", "/d".repeat(100))[..64]);
    assert!(matches!(&err, ArchiveError::TooManyDirectories { entry, limit: 100 } if *entry == expected), "{err}");
    // And their paths count as bytes: 499 parents of up to 1,000 bytes each.
    let err = repackage(&tarred, &Layout::default(), Limits { max_bytes: 200_000, max_entries: 1_000 }).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit: 200_000 }), "{err}");
    // Within the caps, a directory implied by several entries is written once, before them.
    let p = repackage(&tarred[..], &Layout::default(), Limits { max_bytes: 1 << 30, max_entries: 100_000 }).unwrap();
    let got = names(&p);
    assert_eq!(got.len(), 100 * 500);
    assert_eq!(got[0], "000/");
    assert_eq!(got[499], format!("000/{}x", "d/".repeat(498)));
    assert_eq!(got[500], "001/");
}

/// Like [`tar_of`], for names longer than a header holds (GNU long-name records).
fn tar_of_long(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        builder.append_data(&mut h, e.name, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}
