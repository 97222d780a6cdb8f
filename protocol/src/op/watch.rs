//! WATCH: subscribe the connection to change events. The server answers once (the positions
//! the stream starts after), then sends one event frame per committed change that the filter
//! and the token's reach let through, each with the WATCH's request id and the
//! [`STREAM_FLAG`] set, until the connection closes or the server ends the stream with an
//! error frame (flags 0).
//!
//! ```text
//! request: filter_kind u8 | filter str16 | resume_epoch u64 | resume_count u16 | resume_seq u64 * resume_count
//! reply:   epoch u64 | resumed u8 | shard_count u16 | start_seq u64 * shard_count
//! event:   shard u16 | seq u64 | change u8 | version u64 | at_ms u64 | id str16 | owner str16 | scope str16
//! ```
//!
//! A position is a sequence number per shard within one run of the server (its `epoch`): an
//! event of shard `s` with `seq` n follows the one with n - 1. A client resumes by sending the
//! epoch and, for every shard, the last seq it has seen; the reply's `resumed` says whether
//! the server still held everything after those, so that nothing was missed.

use bytes::{BufMut, BytesMut};

use crate::limits::Limits;
use crate::wire::{put_str16, DecodeError, Reader};

/// Response flag bit 0: this frame is an event of the stream its request id opened; more may
/// follow.
pub const STREAM_FLAG: u8 = 0x01;

/// Which changes a watcher is sent (within its token's reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFilter<'a> {
    /// Every credential (`filter_kind` 0, `filter` empty).
    All,
    /// One credential id (`filter_kind` 1).
    Id(&'a str),
    /// Credentials of one owner (`filter_kind` 2).
    Owner(&'a str),
    /// Credentials whose scope starts with these bytes (`filter_kind` 3).
    ScopePrefix(&'a str),
}

impl WatchFilter<'_> {
    /// Whether a change of `id`, owned by `owner` in `scope`, passes.
    pub fn passes(&self, id: &str, owner: &str, scope: &str) -> bool {
        match *self {
            WatchFilter::All => true,
            WatchFilter::Id(wanted) => id == wanted,
            WatchFilter::Owner(wanted) => owner == wanted,
            WatchFilter::ScopePrefix(prefix) => scope.starts_with(prefix),
        }
    }
}

/// The most shards a resume position may name.
pub const RESUME_SHARDS_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest<'a> {
    pub filter: WatchFilter<'a>,
    /// Where to resume: the epoch of the earlier stream and the last seq seen on each shard;
    /// `None` starts with the next change.
    pub resume: Option<(u64, Vec<u64>)>,
}

impl<'a> WatchRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        let (kind, filter) = match self.filter {
            WatchFilter::All => (0, ""),
            WatchFilter::Id(id) => (1, id),
            WatchFilter::Owner(owner) => (2, owner),
            WatchFilter::ScopePrefix(prefix) => (3, prefix),
        };
        out.put_u8(kind);
        put_str16(out, filter);
        let (epoch, seqs) = self.resume.as_ref().map_or((0, &[][..]), |(epoch, seqs)| (*epoch, &seqs[..]));
        out.put_u64_le(epoch);
        out.put_u16_le(seqs.len() as u16);
        for seq in seqs {
            out.put_u64_le(*seq);
        }
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<WatchRequest<'a>, DecodeError> {
        let kind = reader.u8("filter_kind")?;
        let filter = match kind {
            0 => {
                reader.str16("filter", 0)?;
                WatchFilter::All
            }
            1 => WatchFilter::Id(reader.name16("filter", limits.id_bytes_max)?),
            2 => WatchFilter::Owner(reader.str16("filter", limits.name_bytes_max)?),
            3 => WatchFilter::ScopePrefix(reader.str16("filter", limits.name_bytes_max)?),
            other => return Err(DecodeError::InvalidValue { field: "filter_kind", value: other.into() }),
        };
        let epoch = reader.u64("resume_epoch")?;
        let count = reader.u16("resume_count")? as usize;
        if count > RESUME_SHARDS_MAX {
            return Err(DecodeError::InvalidValue { field: "resume_count", value: count as u64 });
        }
        let seqs = (0..count).map(|_| reader.u64("resume_seq")).collect::<Result<Vec<u64>, _>>()?;
        let resume = match (epoch, count) {
            (0, 0) => None,
            _ => Some((epoch, seqs)),
        };
        Ok(WatchRequest { filter, resume })
    }
}

/// The first answer to WATCH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchReply {
    /// This run of the server: positions from another epoch cannot be resumed.
    pub epoch: u64,
    /// True when the stream resumes exactly after the requested positions (nothing missed);
    /// false when it starts with the next change (no resume was asked for, or the server no
    /// longer holds everything after them).
    pub resumed: bool,
    /// Per shard, the seq the stream starts after.
    pub start: Vec<u64>,
}

impl WatchReply {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.epoch);
        out.put_u8(u8::from(self.resumed));
        out.put_u16_le(self.start.len() as u16);
        for seq in &self.start {
            out.put_u64_le(*seq);
        }
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<WatchReply, DecodeError> {
        let epoch = reader.u64("epoch")?;
        let resumed = match reader.u8("resumed")? {
            0 => false,
            1 => true,
            other => return Err(DecodeError::InvalidValue { field: "resumed", value: other.into() }),
        };
        let count = reader.u16("shard_count")?;
        let start = (0..count).map(|_| reader.u64("start_seq")).collect::<Result<Vec<u64>, _>>()?;
        Ok(WatchReply { epoch, resumed, start })
    }
}

/// What happened to a credential.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// PUT wrote `version`.
    Put = 1,
    /// ROTATE wrote `version`.
    Rotate = 2,
    /// STAGE wrote `version` as pending.
    Stage = 3,
    /// PROMOTE made `version` current.
    Promote = 4,
    /// DELETE took it out of service, recoverably (`version` was current).
    Delete = 5,
    /// UNDELETE served it again at `version`.
    Undelete = 6,
    /// DESTROY erased `version`'s secret.
    Destroy = 7,
    /// Removed for good (a purging DELETE, or the end of a recovery window); `version` was
    /// its last.
    Purge = 8,
    /// Swept after it expired; `version` was its last.
    Expire = 9,
    /// SET_POLICY replaced its policy (`version` is the current one).
    Policy = 10,
}

impl Change {
    pub const ALL: [Change; 10] = [
        Change::Put,
        Change::Rotate,
        Change::Stage,
        Change::Promote,
        Change::Delete,
        Change::Undelete,
        Change::Destroy,
        Change::Purge,
        Change::Expire,
        Change::Policy,
    ];

    pub fn from_u8(code: u8) -> Option<Change> {
        Change::ALL.into_iter().find(|change| *change as u8 == code)
    }

    /// Lower-case name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Change::Put => "put",
            Change::Rotate => "rotate",
            Change::Stage => "stage",
            Change::Promote => "promote",
            Change::Delete => "delete",
            Change::Undelete => "undelete",
            Change::Destroy => "destroy",
            Change::Purge => "purge",
            Change::Expire => "expire",
            Change::Policy => "policy",
        }
    }
}

/// One change as a watcher receives it: never a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub shard: u16,
    pub seq: u64,
    pub change: Change,
    pub version: u64,
    /// When the change was made (Unix ms).
    pub at_ms: u64,
    pub id: String,
    pub owner: String,
    pub scope: String,
}

/// An encoded event's fields, borrowed (what a server filters on without decoding it whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub shard: u16,
    pub seq: u64,
    pub change: Change,
    pub version: u64,
    pub at_ms: u64,
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
}

impl EventRef<'_> {
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.shard);
        out.put_u64_le(self.seq);
        out.put_u8(self.change as u8);
        out.put_u64_le(self.version);
        out.put_u64_le(self.at_ms);
        for text in [self.id, self.owner, self.scope] {
            out.put_u16_le(text.len() as u16);
            out.put_slice(text.as_bytes());
        }
    }

    pub fn to_owned(&self) -> WatchEvent {
        WatchEvent {
            shard: self.shard,
            seq: self.seq,
            change: self.change,
            version: self.version,
            at_ms: self.at_ms,
            id: self.id.to_owned(),
            owner: self.owner.to_owned(),
            scope: self.scope.to_owned(),
        }
    }
}

impl<'a> EventRef<'a> {
    pub fn decode(reader: &mut Reader<'a>) -> Result<EventRef<'a>, DecodeError> {
        let shard = reader.u16("shard")?;
        let seq = reader.u64("seq")?;
        let code = reader.u8("change")?;
        let change =
            Change::from_u8(code).ok_or(DecodeError::InvalidValue { field: "change", value: code.into() })?;
        let version = reader.u64("version")?;
        let at_ms = reader.u64("at_ms")?;
        let id = reader.str16("id", usize::MAX)?;
        let owner = reader.str16("owner", usize::MAX)?;
        let scope = reader.str16("scope", usize::MAX)?;
        Ok(EventRef { shard, seq, change, version, at_ms, id, owner, scope })
    }
}

impl WatchEvent {
    pub fn decode(reader: &mut Reader<'_>) -> Result<WatchEvent, DecodeError> {
        EventRef::decode(reader).map(|event| event.to_owned())
    }
}

/// Where a watcher is: the epoch and, per shard, the last seq it has seen. What a client
/// keeps (e.g. in a file, as [`WatchPosition::to_text`]) to resume after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchPosition {
    pub epoch: u64,
    pub seqs: Vec<u64>,
}

impl WatchPosition {
    /// Where a stream starts: what its reply says.
    pub fn from_reply(reply: &WatchReply) -> WatchPosition {
        WatchPosition { epoch: reply.epoch, seqs: reply.start.clone() }
    }

    /// Moves past `event`.
    pub fn advance(&mut self, event: &WatchEvent) {
        if let Some(seq) = self.seqs.get_mut(event.shard as usize) {
            *seq = (*seq).max(event.seq);
        }
    }

    /// The request's `resume` for continuing from here.
    pub fn resume(&self) -> Option<(u64, Vec<u64>)> {
        Some((self.epoch, self.seqs.clone()))
    }

    /// `EPOCH:SEQ,SEQ,…` (decimal).
    pub fn to_text(&self) -> String {
        let seqs: Vec<String> = self.seqs.iter().map(u64::to_string).collect();
        format!("{}:{}", self.epoch, seqs.join(","))
    }

    /// Parses [`WatchPosition::to_text`]'s form.
    pub fn from_text(text: &str) -> Option<WatchPosition> {
        let (epoch, seqs) = text.trim().split_once(':')?;
        let seqs = seqs.split(',').map(|seq| seq.parse().ok()).collect::<Option<Vec<u64>>>()?;
        Some(WatchPosition { epoch: epoch.parse().ok()?, seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_replies_and_events_round_trip() {
        let limits = Limits::default();
        for request in [
            WatchRequest { filter: WatchFilter::All, resume: None },
            WatchRequest { filter: WatchFilter::Id("db/main"), resume: Some((7, vec![3, 0])) },
            WatchRequest { filter: WatchFilter::Owner("payments"), resume: None },
            WatchRequest { filter: WatchFilter::ScopePrefix("prod/"), resume: Some((1, vec![9])) },
        ] {
            let mut out = BytesMut::new();
            request.encode(&mut out);
            let mut reader = Reader::new(&out);
            assert_eq!(WatchRequest::decode(&mut reader, &limits).unwrap(), request);
            reader.finish().unwrap();
        }
        let reply = WatchReply { epoch: 42, resumed: true, start: vec![1, 2, 3] };
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        assert_eq!(WatchReply::decode(&mut Reader::new(&out)).unwrap(), reply);

        let event = EventRef {
            shard: 1,
            seq: 99,
            change: Change::Promote,
            version: 4,
            at_ms: 1_700_000_000_000,
            id: "db/main",
            owner: "payments",
            scope: "prod",
        };
        let mut out = BytesMut::new();
        event.encode(&mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(EventRef::decode(&mut reader).unwrap(), event);
        reader.finish().unwrap();
    }

    #[test]
    fn a_position_advances_per_shard_and_round_trips_as_text() {
        let mut position =
            WatchPosition::from_reply(&WatchReply { epoch: 9, resumed: false, start: vec![4, 0] });
        let event = |shard, seq| WatchEvent {
            shard,
            seq,
            change: Change::Put,
            version: 1,
            at_ms: 0,
            id: "a".into(),
            owner: "o".into(),
            scope: "s".into(),
        };
        position.advance(&event(1, 3));
        position.advance(&event(0, 2)); // older than where shard 0 is: no move
        assert_eq!(position.seqs, vec![4, 3]);
        assert_eq!(position.to_text(), "9:4,3");
        assert_eq!(WatchPosition::from_text("9:4,3\n"), Some(position));
        assert_eq!(WatchPosition::from_text("9:x"), None);
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace().map(|byte| u8::from_str_radix(byte, 16).unwrap()).collect()
    }

    #[test]
    fn the_worked_example_in_docs_protocol_md() {
        let request = WatchRequest { filter: WatchFilter::Owner("payments"), resume: None };
        let mut out = BytesMut::new();
        crate::op::Request::Watch(request).encode(12, &mut out);
        assert_eq!(
            &out[..],
            &hex("1b 00 00 00 1b 00 0c 00 00 00 02 08 00 70 61 79 6d 65 6e 74 73 \
                  00 00 00 00 00 00 00 00 00 00")[..]
        );
        let mut out = BytesMut::new();
        let start = crate::frame::begin(&mut out, 0, 12);
        WatchReply { epoch: 0x1122334455667788, resumed: false, start: vec![5, 9] }.encode(&mut out);
        crate::frame::finish(&mut out, start);
        assert_eq!(
            &out[..],
            &hex("21 00 00 00 00 00 0c 00 00 00 88 77 66 55 44 33 22 11 00 02 00 \
                  05 00 00 00 00 00 00 00 09 00 00 00 00 00 00 00")[..]
        );
        let mut out = BytesMut::new();
        let start = crate::frame::begin(&mut out, 0, 12);
        out[start + crate::frame::LENGTH_BYTES + 1] = STREAM_FLAG;
        let event = EventRef {
            shard: 1,
            seq: 10,
            change: Change::Rotate,
            version: 3,
            at_ms: 1_796_600_000_000,
            id: "db/main",
            owner: "payments",
            scope: "prod",
        };
        event.encode(&mut out);
        crate::frame::finish(&mut out, start);
        assert_eq!(
            &out[..],
            &hex("3a 00 00 00 00 01 0c 00 00 00 01 00 0a 00 00 00 00 00 00 00 02 \
                  03 00 00 00 00 00 00 00 00 6e b4 4d a2 01 00 00 07 00 64 62 2f 6d 61 69 6e \
                  08 00 70 61 79 6d 65 6e 74 73 04 00 70 72 6f 64")[..]
        );
    }

    #[test]
    fn bad_filters_are_refused() {
        let limits = Limits::default();
        let mut unknown = BytesMut::new();
        WatchRequest { filter: WatchFilter::All, resume: None }.encode(&mut unknown);
        unknown[0] = 4;
        assert!(WatchRequest::decode(&mut Reader::new(&unknown), &limits).is_err());
        let mut empty_id = BytesMut::new();
        WatchRequest { filter: WatchFilter::Id(""), resume: None }.encode(&mut empty_id);
        assert!(WatchRequest::decode(&mut Reader::new(&empty_id), &limits).is_err(), "ids are never empty");
        let mut all_with_text = BytesMut::new();
        WatchRequest { filter: WatchFilter::Owner("x"), resume: None }.encode(&mut all_with_text);
        all_with_text[0] = 0;
        assert!(WatchRequest::decode(&mut Reader::new(&all_with_text), &limits).is_err());
        assert!(WatchFilter::ScopePrefix("prod/").passes("a", "o", "prod/db"));
        assert!(!WatchFilter::ScopePrefix("prod/").passes("a", "o", "staging/db"));
    }
}
