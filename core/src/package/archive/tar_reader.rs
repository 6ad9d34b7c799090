//! Tar streams, read entry by entry. The `tar` crate gives the raw entries; the records that
//! describe the next entry (GNU long names and long links, PAX extended headers) are handled
//! here, so their declared size is checked against a cap before a byte of them is buffered:
//! the crate would read a long name of any declared size into memory first.

use std::io::Read;

use super::{ArchiveError, Entry, MAX_PATH_LEN, QUOTED, Tree, io_error, quote};

/// Largest PAX extended header read for one entry. Real ones carry a path, a link target, times,
/// owner names and a few extended attributes: well under this.
const MAX_PAX_HEADER: u64 = 16 << 10;

/// What the records read so far say about the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

pub(super) fn read(stream: impl Read, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(stream);
    let mut pending = Pending::default();
    for entry in archive.entries().map_err(io_error)?.raw(true) {
        let mut entry = entry.map_err(io_error)?;
        let kind = entry.header().entry_type();
        let slot = match kind {
            tar::EntryType::GNULongName => {
                Some((&mut pending.long_name, "GNU long-name record", MAX_PATH_LEN as u64 + 1))
            }
            tar::EntryType::GNULongLink => {
                Some((&mut pending.long_link, "GNU long-link record", MAX_PATH_LEN as u64 + 1))
            }
            tar::EntryType::XHeader => Some((&mut pending.pax, "PAX extended header", MAX_PAX_HEADER)),
            // Global PAX headers say nothing we use; their bytes are skipped unread.
            tar::EntryType::XGlobalHeader => continue,
            _ => None,
        };
        if let Some((slot, record, limit)) = slot {
            if slot.is_some() {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(ArchiveError::CorruptEntry { entry: name, reason: format!("a second {record} in a row") });
            }
            *slot = Some(read_record(&mut entry, record, limit)?);
            continue;
        }
        let described = std::mem::take(&mut pending);
        let pax = described.pax.as_deref().map(pax_records).transpose()?.unwrap_or_default();
        let name_bytes = match (&described.long_name, pax_value(&pax, "path")) {
            (Some(long), _) => trim_nul(long).to_vec(),
            (None, Some(path)) => path.to_vec(),
            (None, None) => entry.path_bytes().into_owned(),
        };
        let name = String::from_utf8(name_bytes).map_err(|e| ArchiveError::UnsafeEntry {
            entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            rule: "is not UTF-8",
        })?;
        let declared = entry.header().size().map_err(io_error)?;
        // The crate frames raw entries by their header's size; a PAX size that says otherwise
        // (only needed past 8 GiB, far over any cap) would make it misread the stream.
        if let Some(size) = pax_value(&pax, "size") {
            let size = std::str::from_utf8(size).ok().and_then(|s| s.parse::<u64>().ok());
            if size != Some(declared) {
                return Err(ArchiveError::CorruptEntry {
                    entry: name,
                    reason: format!("its PAX size differs from its header's {declared} bytes"),
                });
            }
        }
        let parsed = match kind {
            tar::EntryType::Directory => Entry::Directory,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                Entry::File(tree.read_contents(&mut entry, declared)?)
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = match (&described.long_link, pax_value(&pax, "linkpath")) {
                    (Some(long), _) => trim_nul(long).to_vec(),
                    (None, Some(link)) => link.to_vec(),
                    (None, None) => entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default(),
                };
                return Err(ArchiveError::Link { entry: name, target: String::from_utf8_lossy(&target).into_owned() });
            }
            other => return Err(ArchiveError::Special { entry: name, kind: format!("{other:?}").to_lowercase() }),
        };
        tree.add(&name, parsed)?;
    }
    Ok(())
}

/// Reads a record that describes the next entry, refusing it by its header's size first.
fn read_record<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    record: &'static str,
    limit: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.size();
    if size > limit {
        let mut head = Vec::new();
        // One byte more than is quoted, so `quote` marks the cut.
        entry.take(QUOTED as u64 + 1).read_to_end(&mut head).map_err(io_error)?;
        let quoted = quote(trim_nul(&head));
        return Err(ArchiveError::RecordTooLarge { record, entry: quoted, size, limit });
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut data).map_err(io_error)?;
    Ok(data)
}

fn trim_nul(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(&[0]).unwrap_or(bytes)
}

/// One `key=value` record of a PAX extended header.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The `key=value` records of a PAX extended header, parsed by the `tar` crate; a malformed one
/// refuses the entry rather than being skipped.
fn pax_records(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, ArchiveError> {
    tar::PaxExtensions::new(data)
        .map(|record| {
            let record = record.map_err(|e| ArchiveError::CorruptEntry {
                entry: "PAX extended header".into(),
                reason: e.to_string(),
            })?;
            Ok((record.key_bytes(), record.value_bytes()))
        })
        .collect()
}

/// The value of `key`: the first record of it, as the `tar` crate reads it.
fn pax_value<'a>(records: &[PaxRecord<'a>], key: &str) -> Option<&'a [u8]> {
    records.iter().find(|(k, _)| *k == key.as_bytes()).map(|(_, v)| *v)
}
