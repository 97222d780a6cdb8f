//! The write-ahead log format: pure encoding and parsing, no I/O.
//!
//! A log is a sequence of batches, one per group commit:
//!
//! ```text
//! batch:  magic u32 "CSWB" | payload_bytes u32 | payload_crc32c u32 | header_crc32c u32 | payload
//! entry:  body_bytes u32 | entry_type u8 | body          (entries fill the payload back to back)
//! types:  1 RECORD  body = a record's rkyv archive, verbatim (what the map holds)
//!         2 DELETE  body = the credential id (UTF-8)
//!         3 REWRAP  body = a record's archive that replaces the kept version of the same id
//!                   and version (its secret re-encrypted with another data key, or erased by
//!                   DESTROY)
//!         4 SOFT_DELETE body = version u64 | deleted_at_ms u64 | purge_at_ms u64 | id
//!         5 UNDELETE    body = version u64 | id
//!         6 PURGE       body = version u64 | id
//!         7 PENDING     body = a record's archive: the credential's pending version (STAGE)
//!         8 PROMOTE     body = a record's archive: the pending version of the same id and
//!                       version made current (its grace deadline for the replaced version set)
//!         9 POLICY      body = version u64 | id_bytes u16 | id | policy (the SET_POLICY
//!                       encoding; a credential whose policy is the default has none); like
//!                       SOFT_DELETE it names the current version it applies to
//! ```
//!
//! DELETE (2) removes an id and lets its versions start again at 1; servers since recoverable
//! deletes write PURGE instead, which remembers the last version, but still read DELETE in
//! older logs. SOFT_DELETE, UNDELETE and PURGE name the current version they apply to (all
//! integers little-endian, the id UTF-8 to the end of the body): replay applies one only to that
//! version, so a log that repeats what a snapshot already holds replays to the same state.
//!
//! The header CRC covers the first 12 header bytes; the payload CRC covers the payload. A batch
//! is written with one write and made durable with one fdatasync before any of its writes is
//! acknowledged, so a crash can only leave the last batch *torn*: its bytes end early (the
//! header, or the payload its header announces, runs past the end of the file), or some of its
//! sectors never reached the disk and read back as zeros (a file system that extended the file
//! before the data arrived, or a segment preallocated with zeros). Recovery truncates a torn
//! batch: none of its writes was acknowledged. Anything else that fails its checksum — a
//! damaged batch followed by an intact one, or a last batch that is whole but does not match
//! its checksum — cannot come from a crash: it is corruption of acknowledged writes, and
//! recovery refuses to guess. One case cannot be told apart without a change of format (a
//! non-zero batch trailer): a last batch whose share of its final sector is all zeros in its
//! own right (a record ends with a zero grace deadline, so a batch can end in 8 zero bytes,
//! which fall alone in a sector about 1.6% of the time) looks the same whether that sector was
//! written or not, so damage elsewhere in such a batch is read as a torn write and cut. The
//! format before preallocation had the same limit.
//!
//! Zeros after the last batch are not a batch: a segment written with `--fsync always` is
//! preallocated with zeros ahead of its end (so that a commit's fdatasync overwrites allocated
//! blocks and need not commit file-system metadata), and the log ends where they begin.

/// Bytes of a batch header.
pub const BATCH_HEADER_BYTES: usize = 16;
const MAGIC: u32 = u32::from_le_bytes(*b"CSWB");
/// Bytes of an entry header (length and type).
pub const ENTRY_HEADER_BYTES: usize = 5;
/// Largest entry body accepted on recovery (far above any record the limits allow).
pub const ENTRY_BODY_BYTES_MAX: usize = 16 << 20;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    Record = 1,
    Delete = 2,
    /// A kept version re-encrypted with another data key: same id and version, new
    /// ciphertext (a data-key rotation).
    Rewrap = 3,
    /// A credential deleted, recoverable until its purge time.
    SoftDelete = 4,
    /// A deleted credential restored.
    Undelete = 5,
    /// A credential removed for good; its last version is remembered.
    Purge = 6,
    /// A new pending version (STAGE): kept beside the current one, not current.
    Pending = 7,
    /// The pending version made current (PROMOTE).
    Promote = 8,
    /// A credential's policy replaced (SET_POLICY).
    Policy = 9,
}

/// One logged write, borrowed from the log's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Record(&'a [u8]),
    Delete(&'a str),
    Rewrap(&'a [u8]),
    SoftDelete { id: &'a str, version: u64, deleted_at_ms: u64, purge_at_ms: u64 },
    Undelete { id: &'a str, version: u64 },
    Purge { id: &'a str, version: u64 },
    Pending(&'a [u8]),
    Promote(&'a [u8]),
    Policy { id: &'a str, version: u64, policy: &'a [u8] },
}

/// The body of a POLICY entry.
pub fn policy_body(id: &str, version: u64, policy: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(10 + id.len() + policy.len());
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(&(id.len() as u16).to_le_bytes());
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(policy);
    body
}

/// The body of a SOFT_DELETE entry.
pub fn soft_delete_body(id: &str, version: u64, deleted_at_ms: u64, purge_at_ms: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(24 + id.len());
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(&deleted_at_ms.to_le_bytes());
    body.extend_from_slice(&purge_at_ms.to_le_bytes());
    body.extend_from_slice(id.as_bytes());
    body
}

/// The body of an UNDELETE or PURGE entry.
pub fn version_body(id: &str, version: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + id.len());
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(id.as_bytes());
    body
}

/// `count` little-endian u64s, then a UTF-8 id.
fn split_body<const N: usize>(body: &[u8]) -> Result<([u64; N], &str), &'static str> {
    if body.len() < 8 * N {
        return Err("lifecycle entry shorter than its fields");
    }
    let mut values = [0u64; N];
    for (index, value) in values.iter_mut().enumerate() {
        *value = u64::from_le_bytes(body[8 * index..8 * index + 8].try_into().expect("8 bytes"));
    }
    let id = std::str::from_utf8(&body[8 * N..]).map_err(|_| "lifecycle entry id is not UTF-8")?;
    Ok((values, id))
}

/// Appends one entry to a batch payload being built.
pub fn encode_entry(entry_type: EntryType, body: &[u8], payload: &mut Vec<u8>) {
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.push(entry_type as u8);
    payload.extend_from_slice(body);
}

/// Wraps a payload of entries into a batch ready to write.
pub fn encode_batch(payload: &[u8]) -> Vec<u8> {
    let mut batch = Vec::with_capacity(BATCH_HEADER_BYTES + payload.len());
    batch.resize(BATCH_HEADER_BYTES, 0);
    batch.extend_from_slice(payload);
    seal_batch(&mut batch);
    batch
}

/// A buffer for building a batch in place: [`BATCH_HEADER_BYTES`] reserved for the header,
/// the entries appended after them ([`encode_entry`]), then [`seal_batch`]: no copy of the
/// payload into a second buffer.
pub fn batch_buffer(capacity: usize) -> Vec<u8> {
    let mut batch = Vec::with_capacity(BATCH_HEADER_BYTES + capacity);
    batch.resize(BATCH_HEADER_BYTES, 0);
    batch
}

/// True when a [`batch_buffer`] holds no entry.
pub fn batch_is_empty(batch: &[u8]) -> bool {
    batch.len() <= BATCH_HEADER_BYTES
}

/// Writes the header of a batch built in a [`batch_buffer`] (its entries after the header's
/// bytes), which is then ready to write.
///
/// # Panics
/// If `batch` is shorter than the header.
pub fn seal_batch(batch: &mut [u8]) {
    let (header, payload) = batch.split_at_mut(BATCH_HEADER_BYTES);
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..12]);
    header[12..16].copy_from_slice(&header_crc.to_le_bytes());
}

/// What recovery found in one log.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub entries: Vec<Entry<'a>>,
    /// Bytes of whole, intact batches: the log is truncated to this length.
    pub valid_bytes: usize,
}

/// Why a log cannot be recovered.
#[derive(Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Offset of the damaged batch.
    pub offset: usize,
    pub reason: &'static str,
}

/// The unit a disk writes atomically: a crash leaves each such aligned block of a file wholly
/// written or not at all.
const SECTOR_BYTES: usize = 512;

/// Parses a whole log. A torn final batch ends the log (its bytes are reported as not valid);
/// any other damage is [`Corruption`].
///
/// # Errors
/// [`Corruption`] with the offset of the damaged batch.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, Corruption> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match batch_at(bytes, offset) {
            Ok((payload, next)) => {
                parse_payload(payload, &mut entries).map_err(|reason| Corruption { offset, reason })?;
                offset = next;
            }
            Err(reason) => {
                if find_intact_batch(bytes, offset + 1).is_some() {
                    return Err(Corruption { offset, reason });
                }
                if !is_torn(bytes, offset) {
                    return Err(Corruption {
                        offset,
                        reason: "the last batch is whole but fails its checksum (damage at rest, not a torn write)",
                    });
                }
                break;
            }
        }
    }
    Ok(Parsed { entries, valid_bytes: offset })
}

/// Whether the damaged last batch at `offset` is what a crash during its write leaves: its
/// bytes end early, or part of it never reached the disk. A sector that was not written reads
/// back as it was before, which for the log is zeros (the file system extended the file, or
/// the segment was preallocated with zeros; see `storage::log`). So the batch is torn when the
/// part of some sector that belongs to it is all zeros: its header's sector when the header is
/// broken, any of its sectors when the header is intact (whatever follows it). Bytes that are
/// damaged but not zeroed a sector at a time are not a crash.
fn is_torn(bytes: &[u8], offset: usize) -> bool {
    let Some(header) = bytes.get(offset..offset + BATCH_HEADER_BYTES) else {
        return true; // the header itself is incomplete
    };
    let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let header_intact = field(0) == MAGIC && field(12) == crc32c::crc32c(&header[..12]);
    let (first, end) = if header_intact {
        let end = offset + BATCH_HEADER_BYTES + field(4) as usize;
        if end > bytes.len() {
            return true; // the payload the header announces runs past the end of the file
        }
        (offset, end)
    } else {
        // The header's sectors, each to its end (the header names no extent to trust).
        (offset, (offset + BATCH_HEADER_BYTES).next_multiple_of(SECTOR_BYTES).min(bytes.len()))
    };
    let mut sector = first - first % SECTOR_BYTES;
    while sector < end {
        let part = &bytes[sector.max(first)..(sector + SECTOR_BYTES).min(end)];
        if part.iter().all(|&byte| byte == 0) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

/// The payload of an intact batch at `offset` and the offset after it.
fn batch_at(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), &'static str> {
    let header = bytes.get(offset..offset + BATCH_HEADER_BYTES).ok_or("incomplete batch header")?;
    let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if field(0) != MAGIC {
        return Err("bad batch magic");
    }
    if field(12) != crc32c::crc32c(&header[..12]) {
        return Err("batch header checksum mismatch");
    }
    let start = offset + BATCH_HEADER_BYTES;
    let end = start + field(4) as usize;
    let payload = bytes.get(start..end).ok_or("incomplete batch payload")?;
    if crc32c::crc32c(payload) != field(8) {
        return Err("batch payload checksum mismatch");
    }
    Ok((payload, end))
}

/// The offset of the first intact batch at or after `from`, if any.
fn find_intact_batch(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(BATCH_HEADER_BYTES - 1))
        .filter(|&offset| bytes[offset..offset + 4] == magic)
        .find(|&offset| batch_at(bytes, offset).is_ok())
}

fn parse_payload<'a>(mut payload: &'a [u8], entries: &mut Vec<Entry<'a>>) -> Result<(), &'static str> {
    // The payload passed its checksum, so a malformed entry here was written that way: a bug
    // or deliberate tampering, never a torn write.
    while !payload.is_empty() {
        if payload.len() < ENTRY_HEADER_BYTES {
            return Err("entry header runs past its batch");
        }
        let body_bytes = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
        if body_bytes > ENTRY_BODY_BYTES_MAX || ENTRY_HEADER_BYTES + body_bytes > payload.len() {
            return Err("entry body runs past its batch");
        }
        let body = &payload[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + body_bytes];
        let entry = match payload[4] {
            1 => Entry::Record(body),
            2 => Entry::Delete(std::str::from_utf8(body).map_err(|_| "delete entry id is not UTF-8")?),
            3 => Entry::Rewrap(body),
            4 => {
                let ([version, deleted_at_ms, purge_at_ms], id) = split_body::<3>(body)?;
                Entry::SoftDelete { id, version, deleted_at_ms, purge_at_ms }
            }
            5 => {
                let ([version], id) = split_body::<1>(body)?;
                Entry::Undelete { id, version }
            }
            6 => {
                let ([version], id) = split_body::<1>(body)?;
                Entry::Purge { id, version }
            }
            7 => Entry::Pending(body),
            8 => Entry::Promote(body),
            9 => {
                let header = body.get(..10).ok_or("policy entry shorter than its version and id length")?;
                let version = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
                let id_end = 10 + u16::from_le_bytes(header[8..].try_into().expect("2 bytes")) as usize;
                let id = body.get(10..id_end).ok_or("policy entry shorter than its id")?;
                let id = std::str::from_utf8(id).map_err(|_| "policy entry id is not UTF-8")?;
                Entry::Policy { id, version, policy: &body[id_end..] }
            }
            _ => return Err("unknown entry type"),
        };
        entries.push(entry);
        payload = &payload[ENTRY_HEADER_BYTES + body_bytes..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_built_in_place_is_the_batch_encode_batch_makes() {
        let mut payload = Vec::new();
        let mut in_place = batch_buffer(0);
        assert!(batch_is_empty(&in_place));
        for (index, body) in [&b"first"[..], b"", b"third entry"].into_iter().enumerate() {
            encode_entry(EntryType::Record, body, &mut payload);
            encode_entry(EntryType::Record, body, &mut in_place);
            assert!(!batch_is_empty(&in_place), "{index}");
        }
        seal_batch(&mut in_place);
        assert_eq!(in_place, encode_batch(&payload));
        let parsed = parse(&in_place).unwrap();
        assert_eq!((parsed.entries.len(), parsed.valid_bytes), (3, in_place.len()));
    }

    /// A log of `count` single-entry batches; returns it and each batch's end offset.
    fn log(count: usize) -> (Vec<u8>, Vec<usize>) {
        let mut log = Vec::new();
        let mut ends = Vec::new();
        for index in 0..count {
            let mut payload = Vec::new();
            if index % 3 == 2 {
                encode_entry(EntryType::Delete, format!("id-{index}").as_bytes(), &mut payload);
            } else {
                encode_entry(EntryType::Record, &vec![index as u8; 10 + index * 7], &mut payload);
            }
            log.extend(encode_batch(&payload));
            ends.push(log.len());
        }
        (log, ends)
    }

    #[test]
    fn round_trip_of_batches_with_several_entries() {
        let mut payload = Vec::new();
        encode_entry(EntryType::Record, b"archive", &mut payload);
        encode_entry(EntryType::Delete, b"gone", &mut payload);
        encode_entry(EntryType::Rewrap, b"again", &mut payload);
        encode_entry(EntryType::SoftDelete, &soft_delete_body("é/x", 7, 100, 200), &mut payload);
        encode_entry(EntryType::Undelete, &version_body("u", 8), &mut payload);
        encode_entry(EntryType::Purge, &version_body("p", u64::MAX), &mut payload);
        encode_entry(EntryType::Pending, b"staged", &mut payload);
        encode_entry(EntryType::Promote, b"promoted", &mut payload);
        encode_entry(EntryType::Policy, &policy_body("pol/é", 3, b"rules"), &mut payload);
        let batch = encode_batch(&payload);
        let parsed = parse(&batch).unwrap();
        assert_eq!(
            parsed.entries,
            vec![
                Entry::Record(b"archive"),
                Entry::Delete("gone"),
                Entry::Rewrap(b"again"),
                Entry::SoftDelete { id: "é/x", version: 7, deleted_at_ms: 100, purge_at_ms: 200 },
                Entry::Undelete { id: "u", version: 8 },
                Entry::Purge { id: "p", version: u64::MAX },
                Entry::Pending(b"staged"),
                Entry::Promote(b"promoted"),
                Entry::Policy { id: "pol/é", version: 3, policy: b"rules" },
            ]
        );
        assert_eq!(parsed.valid_bytes, batch.len());
    }

    #[test]
    fn a_lifecycle_entry_shorter_than_its_fields_is_corruption() {
        for (entry_type, body) in [(EntryType::SoftDelete, vec![0u8; 23]), (EntryType::Purge, vec![0u8; 7])] {
            let mut payload = Vec::new();
            encode_entry(entry_type, &body, &mut payload);
            assert!(parse(&encode_batch(&payload)).is_err(), "{entry_type:?}");
        }
    }

    #[test]
    fn truncation_at_every_offset_keeps_exactly_the_whole_batches_before_it() {
        let (log, ends) = log(12);
        for cut in 0..=log.len() {
            let parsed = parse(&log[..cut]).unwrap_or_else(|error| panic!("cut {cut}: {error:?}"));
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(parsed.entries.len(), whole, "cut at {cut}");
            assert_eq!(parsed.valid_bytes, if whole == 0 { 0 } else { ends[whole - 1] });
        }
    }

    /// `log` with a bit flipped inside the payload of its last (fifth) batch, checked to be
    /// corruption at that batch, not a torn write.
    fn damaged_payload_of_the_fifth_batch(log: &[u8], ends: &[usize]) -> Vec<u8> {
        let mut damaged = log.to_vec();
        damaged[ends[3] + 20] ^= 0xFF;
        let error = parse(&damaged).unwrap_err();
        assert_eq!(error.offset, ends[3]);
        assert!(error.reason.contains("not a torn write"), "{error:?}");
        damaged
    }

    #[test]
    fn damage_inside_a_whole_last_batch_is_corruption_not_a_torn_write() {
        let (log, ends) = log(5);
        let damaged = damaged_payload_of_the_fifth_batch(&log, &ends);
        let mut damaged_header = log.clone();
        damaged_header[ends[3] + 9] ^= 0xFF; // the last batch's payload checksum field
        assert_eq!(parse(&damaged_header).unwrap_err().offset, ends[3]);
        // The same batch cut short is torn, whatever its last bytes hold.
        let mut cut = damaged[..log.len() - 1].to_vec();
        let parsed = parse(&cut).unwrap();
        assert_eq!((parsed.entries.len(), parsed.valid_bytes), (4, ends[3]));
        cut.truncate(ends[3] + 7); // inside the header
        assert_eq!(parse(&cut).unwrap().valid_bytes, ends[3]);
    }

    /// A log of two batches of one record each, of `first` and `second` body bytes; returns it
    /// and the first batch's end.
    fn two_batches(first: usize, second: usize) -> (Vec<u8>, usize) {
        let batch = |fill: u8, length: usize| {
            let mut payload = Vec::new();
            encode_entry(EntryType::Record, &vec![fill; length], &mut payload);
            encode_batch(&payload)
        };
        let mut log = batch(0xAB, first);
        let first_end = log.len();
        log.extend(batch(0xCD, second));
        (log, first_end)
    }

    #[test]
    fn a_last_batch_whose_tail_sectors_read_as_zeros_is_torn() {
        // A big last batch whose final sectors never reached the disk: the file system extended
        // the file, so they read back as zeros.
        let (log, first_end) = two_batches(4000, 4000);
        let mut unwritten = log.clone();
        let sector = (first_end + 1000).next_multiple_of(SECTOR_BYTES);
        unwritten[sector..].fill(0);
        let parsed = parse(&unwritten).unwrap();
        assert_eq!((parsed.entries.len(), parsed.valid_bytes), (1, first_end));
        // Zeros that start off a sector boundary, up to the end, are damage, not a crash.
        let mut zeroed_off_boundary = log.clone();
        zeroed_off_boundary[log.len() - 3..].fill(0);
        assert!(parse(&zeroed_off_boundary).is_err());
    }

    #[test]
    fn damage_before_an_intact_batch_is_corruption() {
        let (log, ends) = log(5);
        let mut corrupt = log.clone();
        corrupt[ends[1] + 20] ^= 0xFF; // inside batch 3 of 5
        assert_eq!(parse(&corrupt).unwrap_err().offset, ends[1]);
        let mut corrupt_header = log;
        corrupt_header[ends[0] + 5] ^= 0xFF;
        assert_eq!(parse(&corrupt_header).unwrap_err().offset, ends[0]);
    }

    /// Every byte from `offset` on is zero: preallocated space, or nothing of a batch.
    fn zeros_from(bytes: &[u8], offset: usize) -> bool {
        bytes[offset..].iter().all(|&byte| byte == 0)
    }

    #[test]
    fn a_preallocated_log_ends_where_its_zeros_begin() {
        let (log, ends) = log(6);
        let mut preallocated = log.clone();
        preallocated.resize(log.len().next_multiple_of(4096) + 8192, 0);
        let parsed = parse(&preallocated).unwrap();
        assert_eq!((parsed.entries.len(), parsed.valid_bytes), (6, ends[5]));
        assert!(zeros_from(&preallocated, parsed.valid_bytes));
    }

    #[test]
    fn in_a_preallocated_log_a_last_batch_with_an_unwritten_sector_is_torn() {
        // A last batch of three sectors and more, then preallocated zeros.
        let (mut log, first_end) = two_batches(700, 1500);
        let whole = log.len();
        log.resize(whole + 4096, 0);
        let sectors = (first_end.next_multiple_of(SECTOR_BYTES)..whole).step_by(SECTOR_BYTES);
        for sector in sectors {
            // Any one sector of it that never reached the disk (a middle one, or its last part).
            let mut unwritten = log.clone();
            unwritten[sector..(sector + SECTOR_BYTES).min(whole)].fill(0);
            let parsed = parse(&unwritten).unwrap_or_else(|error| panic!("sector {sector}: {error:?}"));
            assert_eq!((parsed.entries.len(), parsed.valid_bytes), (1, first_end), "sector {sector}");
            assert!(!zeros_from(&unwritten, parsed.valid_bytes), "a torn batch is not preallocated space");
        }
        // Its header's sector unwritten (the sector also holds the first batch's tail).
        let mut header_unwritten = log.clone();
        header_unwritten[first_end..first_end.next_multiple_of(SECTOR_BYTES)].fill(0);
        assert_eq!(parse(&header_unwritten).unwrap().valid_bytes, first_end);
    }

    #[test]
    fn in_a_preallocated_log_damage_to_a_whole_last_batch_is_corruption() {
        let (mut log, ends) = log(5);
        log.resize(log.len() + 4096, 0);
        damaged_payload_of_the_fifth_batch(&log, &ends);
        let mut damaged_header = log.clone();
        damaged_header[ends[3] + 2] ^= 0xFF; // the last batch's magic
        assert_eq!(parse(&damaged_header).unwrap_err().offset, ends[3]);
        // Its last bytes zeroed, but not a whole sector's share of it.
        let mut zeroed = log.clone();
        zeroed[ends[4] - 3..ends[4]].fill(0);
        assert!(ends[4] % SECTOR_BYTES > 3, "the zeroed bytes share their sector with the rest of the batch");
        assert!(parse(&zeroed).is_err());
    }

    #[test]
    fn zeroed_tail_is_torn() {
        let (mut log, ends) = log(3);
        log.extend(vec![0u8; 4096]);
        let parsed = parse(&log).unwrap();
        assert_eq!((parsed.entries.len(), parsed.valid_bytes), (3, ends[2]));
    }
}
