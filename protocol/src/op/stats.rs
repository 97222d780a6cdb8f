//! STATS: server counters as named values.
//!
//! ```text
//! request: (empty)
//! reply:   count u16 | (name str16 | value u64)*
//! ```

use bytes::{BufMut, BytesMut};

use crate::wire::{put_str16, DecodeError, Reader};

/// Counters in the order the server sent them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StatsReply {
    pub values: Vec<(String, u64)>,
}

impl StatsReply {
    pub fn encode(values: &[(&str, u64)], out: &mut BytesMut) {
        out.put_u16_le(u16::try_from(values.len()).expect("at most 65535 counters"));
        for (name, value) in values {
            put_str16(out, name);
            out.put_u64_le(*value);
        }
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<StatsReply, DecodeError> {
        let count = reader.u16("count")?;
        let values = (0..count)
            .map(|_| Ok((reader.str16("name", usize::MAX)?.to_owned(), reader.u64("value")?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok(StatsReply { values })
    }

    /// The value of a counter by name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(key, _)| key == name).map(|(_, value)| *value)
    }
}
