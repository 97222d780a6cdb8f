//! BATCH_GET: many credentials in one frame, one result per id, in request order.
//!
//! ```text
//! request: count u16 (1..=1000) | id str16 * count
//! reply:   count u16 | (status u8 | result)*
//!          result for status OK:    metadata | secret bytes32   (a GET reply body)
//!          result for other status: detail u64 | message str16  (an error body)
//! ```

use bytes::{BufMut, BytesMut};

use crate::code::Status;
use crate::error::ClientError;
use crate::limits::Limits;
use crate::op::get::GetReply;
use crate::wire::{put_str16, DecodeError, Reader};

/// Most ids in one BATCH_GET.
pub const BATCH_IDS_MAX: usize = 1000;

/// A borrowed BATCH_GET request: the ids, validated, still in their wire encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchGetRequest<'a> {
    count: u16,
    encoded_ids: &'a [u8],
}

impl<'a> BatchGetRequest<'a> {
    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<BatchGetRequest<'a>, DecodeError> {
        let count = reader.u16("count")?;
        if count == 0 {
            return Err(DecodeError::InvalidValue { field: "count", value: 0 });
        }
        if count as usize > BATCH_IDS_MAX {
            return Err(DecodeError::TooLong {
                field: "ids",
                bytes: count as usize,
                bytes_max: BATCH_IDS_MAX,
            });
        }
        let before = reader.clone();
        for _ in 0..count {
            reader.name16("id", limits.id_bytes_max)?;
        }
        let consumed = before.remaining() - reader.remaining();
        let encoded_ids = &before.clone().rest()[..consumed];
        Ok(BatchGetRequest { count, encoded_ids })
    }

    /// Wraps a body made by [`BatchGetRequest::encode`] (for clients).
    ///
    /// # Errors
    /// When `encoded` is not a valid BATCH_GET body.
    pub fn from_encoded(encoded: &'a [u8]) -> Result<BatchGetRequest<'a>, DecodeError> {
        let mut reader = Reader::new(encoded);
        let request = BatchGetRequest::decode(&mut reader, &Limits::client())?;
        reader.finish()?;
        Ok(request)
    }

    /// Appends the body for `ids` to `out`.
    ///
    /// # Panics
    /// If `ids` is empty or longer than [`BATCH_IDS_MAX`].
    pub fn encode<S: AsRef<str>>(ids: &[S], out: &mut BytesMut) {
        assert!((1..=BATCH_IDS_MAX).contains(&ids.len()), "1..=1000 ids per BATCH_GET");
        out.put_u16_le(ids.len() as u16);
        for id in ids {
            put_str16(out, id.as_ref());
        }
    }

    /// The encoded body (count included) of a request to re-send as is.
    pub fn encoded_body(&self, out: &mut BytesMut) {
        out.put_u16_le(self.count);
        out.put_slice(self.encoded_ids);
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ids in request order.
    pub fn ids(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut reader = Reader::new(self.encoded_ids);
        (0..self.count).map_while(move |_| reader.str16("id", usize::MAX).ok())
    }
}

/// One result of a BATCH_GET reply.
pub type BatchItem = Result<GetReply, ClientError>;

/// Decodes a BATCH_GET reply body.
pub fn decode_batch_reply(reader: &mut Reader<'_>) -> Result<Vec<BatchItem>, DecodeError> {
    let count = reader.u16("count")?;
    (0..count)
        .map(|_| {
            let code = reader.u8("status")?;
            let status = Status::from_u8(code)
                .ok_or(DecodeError::InvalidValue { field: "status", value: code.into() })?;
            if status == Status::Ok {
                return GetReply::decode(reader).map(Ok);
            }
            let detail = reader.u64("detail")?;
            let message = reader.str16("message", usize::MAX)?.to_owned();
            Ok(Err(ClientError::Server { status, detail, message }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_count_is_bounded() {
        let mut out = BytesMut::new();
        BatchGetRequest::encode(&["a", "bb", "ccc"], &mut out);
        let mut reader = Reader::new(&out);
        let request = BatchGetRequest::decode(&mut reader, &Limits::default()).unwrap();
        reader.finish().unwrap();
        assert_eq!(request.ids().collect::<Vec<_>>(), vec!["a", "bb", "ccc"]);

        let mut too_many = BytesMut::new();
        too_many.put_u16_le(1001);
        assert!(matches!(
            BatchGetRequest::decode(&mut Reader::new(&too_many), &Limits::default()),
            Err(DecodeError::TooLong { .. })
        ));
        let empty = [0u8, 0];
        assert!(BatchGetRequest::decode(&mut Reader::new(&empty), &Limits::default()).is_err());
    }
}
