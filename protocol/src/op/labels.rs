//! Labels: a small map of string keys to string values attached to a credential.
//!
//! Wire form, kept verbatim in the stored record: `count u16 | (key str16 | value str16)*`.
//! Keys are non-empty and unique; the server stores the bytes it was sent, so the order a
//! client gives is the order it reads back.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_str16, DecodeError, Reader};

/// Validated, encoded labels borrowed from a body or a record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Labels<'a> {
    encoded: &'a [u8],
}

/// The encoding of an empty label map.
pub const EMPTY_LABELS: &[u8] = &[0, 0];

impl<'a> Labels<'a> {
    /// Parses and validates labels at the reader's position; the result borrows the bytes.
    pub fn decode(
        reader: &mut Reader<'a>,
        name_bytes_max: usize,
        labels_bytes_max: usize,
    ) -> Result<Labels<'a>, DecodeError> {
        let start = reader.clone();
        let count = reader.u16("labels")?;
        for index in 0..count {
            let key = reader.name16("label key", name_bytes_max)?;
            reader.str16("label value", name_bytes_max)?;
            // Duplicate keys are rejected so every reader sees the same map. The check is
            // quadratic in the label count, which the byte limit keeps small.
            let mut earlier = Labels { encoded: start_bytes(&start, reader) }.iter();
            if earlier.by_ref().take(index as usize).any(|(other, _)| other == key) {
                return Err(DecodeError::InvalidValue {
                    field: "label key (duplicate)",
                    value: index.into(),
                });
            }
        }
        let encoded = start_bytes(&start, reader);
        if encoded.len() > labels_bytes_max {
            return Err(DecodeError::TooLong {
                field: "labels",
                bytes: encoded.len(),
                bytes_max: labels_bytes_max,
            });
        }
        Ok(Labels { encoded })
    }

    /// Wraps bytes that were validated when they were first decoded (e.g. a stored record).
    pub fn from_validated(encoded: &'a [u8]) -> Labels<'a> {
        Labels { encoded }
    }

    /// The wire encoding, count included.
    pub fn encoded(&self) -> &'a [u8] {
        self.encoded
    }

    pub fn len(&self) -> usize {
        if self.encoded.len() < 2 {
            return 0;
        }
        u16::from_le_bytes([self.encoded[0], self.encoded[1]]) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut reader = Reader::new(self.encoded);
        let count = reader.u16("labels").unwrap_or(0);
        (0..count).map_while(move |_| {
            let key = reader.str16("label key", usize::MAX).ok()?;
            let value = reader.str16("label value", usize::MAX).ok()?;
            Some((key, value))
        })
    }
}

fn start_bytes<'a>(start: &Reader<'a>, now: &Reader<'a>) -> &'a [u8] {
    let mut whole = start.clone();
    let consumed = start.remaining() - now.remaining();
    &whole.rest()[..consumed]
}

/// Encodes pairs as labels.
///
/// # Panics
/// If there are more than 65,535 pairs or a key or value exceeds 65,535 bytes.
pub fn encode_labels(pairs: &[(&str, &str)], out: &mut BytesMut) {
    out.put_u16_le(u16::try_from(pairs.len()).expect("at most 65535 labels"));
    for (key, value) in pairs {
        put_str16(out, key);
        put_str16(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(pairs: &[(&str, &str)]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_labels(pairs, &mut out);
        out
    }

    #[test]
    fn round_trip_and_limits() {
        let bytes = encoded(&[("env", "prod"), ("team", "payments")]);
        let labels = Labels::decode(&mut Reader::new(&bytes), 16, 64).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.iter().collect::<Vec<_>>(), vec![("env", "prod"), ("team", "payments")]);
        assert_eq!(labels.encoded(), &bytes[..]);
        assert!(matches!(
            Labels::decode(&mut Reader::new(&bytes), 16, 10),
            Err(DecodeError::TooLong { field: "labels", .. })
        ));
        assert!(Labels::decode(&mut Reader::new(&bytes), 4, 64).is_err());
        let empty = encoded(&[]);
        assert_eq!(empty, EMPTY_LABELS);
        assert!(Labels::decode(&mut Reader::new(&empty), 4, 64).unwrap().is_empty());
    }

    #[test]
    fn duplicate_and_empty_keys_are_rejected() {
        let bytes = encoded(&[("env", "a"), ("env", "b")]);
        assert!(Labels::decode(&mut Reader::new(&bytes), 16, 64).is_err());
        let bytes = encoded(&[("", "a")]);
        assert!(Labels::decode(&mut Reader::new(&bytes), 16, 64).is_err());
    }
}
