//! Body primitives: little-endian integers, `str16` (u16 length + UTF-8), `bytes32` (u32
//! length + bytes), `opt_u64` (u8 presence + u64). [`Reader`] parses a body in place without
//! allocating; the `put_*` functions append to an output buffer.

use bytes::{BufMut, BytesMut};

/// Why a body could not be decoded. [`DecodeError::TooLong`] maps to `TOO_LARGE`, every other
/// variant to `MALFORMED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body ends inside field `{field}`")]
    Truncated { field: &'static str },
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("field `{field}` is {bytes} bytes, above the limit of {bytes_max}")]
    TooLong { field: &'static str, bytes: usize, bytes_max: usize },
    #[error("field `{field}` must not be empty")]
    Empty { field: &'static str },
    #[error("field `{field}` has an invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("{bytes} unexpected bytes after the last field")]
    TrailingBytes { bytes: usize },
}

/// A cursor over a body. Every accessor names its field so errors can say which one failed.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < count {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// `u8` presence flag (0 or 1) followed by a `u64` that is always present on the wire
    /// and must be 0 when the flag is 0.
    pub fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let present = self.u8(field)?;
        let value = self.u64(field)?;
        // One encoding per value: an absent value must be written as 0.
        match present {
            0 if value == 0 => Ok(None),
            0 => Err(DecodeError::InvalidValue { field, value }),
            1 => Ok(Some(value)),
            other => Err(DecodeError::InvalidValue { field, value: other.into() }),
        }
    }

    /// A `str16` of at most `bytes_max` bytes.
    pub fn str16(&mut self, field: &'static str, bytes_max: usize) -> Result<&'a str, DecodeError> {
        let length = self.u16(field)? as usize;
        if length > bytes_max {
            return Err(DecodeError::TooLong { field, bytes: length, bytes_max });
        }
        let bytes = self.take(length, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// A non-empty `str16` of at most `bytes_max` bytes.
    pub fn name16(&mut self, field: &'static str, bytes_max: usize) -> Result<&'a str, DecodeError> {
        let value = self.str16(field, bytes_max)?;
        if value.is_empty() {
            return Err(DecodeError::Empty { field });
        }
        Ok(value)
    }

    /// A `bytes32` of at most `bytes_max` bytes.
    pub fn bytes32(&mut self, field: &'static str, bytes_max: usize) -> Result<&'a [u8], DecodeError> {
        let length = self.u32(field)? as usize;
        if length > bytes_max {
            return Err(DecodeError::TooLong { field, bytes: length, bytes_max });
        }
        self.take(length, field)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Checks that the whole body was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            bytes => Err(DecodeError::TrailingBytes { bytes }),
        }
    }
}

/// Appends a `str16`.
///
/// # Panics
/// If `value` is longer than `u16::MAX` bytes: callers validate lengths first.
#[inline]
pub fn put_str16(out: &mut BytesMut, value: &str) {
    let length = u16::try_from(value.len()).expect("str16 field longer than 65535 bytes");
    out.put_u16_le(length);
    out.put_slice(value.as_bytes());
}

/// Appends a `bytes32`.
#[inline]
pub fn put_bytes32(out: &mut BytesMut, value: &[u8]) {
    let length = u32::try_from(value.len()).expect("bytes32 field longer than 4 GiB");
    out.put_u32_le(length);
    out.put_slice(value);
}

/// Appends an `opt_u64`.
#[inline]
pub fn put_opt_u64(out: &mut BytesMut, value: Option<u64>) {
    out.put_u8(value.is_some() as u8);
    out.put_u64_le(value.unwrap_or(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut out = BytesMut::new();
        put_str16(&mut out, "owner");
        put_bytes32(&mut out, b"\x00\x01secret");
        put_opt_u64(&mut out, Some(9));
        put_opt_u64(&mut out, None);
        out.put_u8(7);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.str16("a", 10).unwrap(), "owner");
        assert_eq!(reader.bytes32("b", 10).unwrap(), b"\x00\x01secret");
        assert_eq!(reader.opt_u64("c").unwrap(), Some(9));
        assert_eq!(reader.opt_u64("d").unwrap(), None);
        assert_eq!(reader.clone().finish(), Err(DecodeError::TrailingBytes { bytes: 1 }));
        assert_eq!(reader.u8("e").unwrap(), 7);
        assert_eq!(reader.u8("f"), Err(DecodeError::Truncated { field: "f" }));
    }

    #[test]
    fn limits_and_validation() {
        let mut out = BytesMut::new();
        put_str16(&mut out, "abcdef");
        assert_eq!(
            Reader::new(&out).str16("id", 5),
            Err(DecodeError::TooLong { field: "id", bytes: 6, bytes_max: 5 })
        );
        let mut out = BytesMut::new();
        put_str16(&mut out, "");
        assert_eq!(Reader::new(&out).name16("id", 5), Err(DecodeError::Empty { field: "id" }));
        let invalid = [2u8, 0, 0xff, 0xfe];
        assert_eq!(Reader::new(&invalid).str16("id", 5), Err(DecodeError::InvalidUtf8 { field: "id" }));
        let absent_with_value = [0u8, 5, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Reader::new(&absent_with_value).opt_u64("v"),
            Err(DecodeError::InvalidValue { field: "v", value: 5 })
        );
        let bad_presence = [2u8, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Reader::new(&bad_presence).opt_u64("v"),
            Err(DecodeError::InvalidValue { field: "v", value: 2 })
        );
    }
}
