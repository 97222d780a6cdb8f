//! Property tests of the codec: every valid request survives encode → frame check → decode;
//! arbitrary bytes never panic the decoders; frames split identically however the byte
//! stream is chunked.

use bytes::BytesMut;
use credshard_protocol::client::ResponseFrame;
use credshard_protocol::frame;
use credshard_protocol::op::delete::{
    DeleteRequest, DestroyRequest, UndeleteRequest, RECOVERY_WINDOW_SECONDS_MAX,
};
use credshard_protocol::op::get::{GetMetaReply, GetMetaRequest, GetReply, GetRequest, Stage};
use credshard_protocol::op::hello::HelloRequest;
use credshard_protocol::op::keys::RekeyRequest;
use credshard_protocol::op::put::{EXPIRES_AT_MS_MAX, TTL_MS_MAX};
use credshard_protocol::op::rotate::GRACE_PERIOD_SECONDS_MAX;
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::op::stats::StatsReply;
use credshard_protocol::wire::Reader;
use credshard_protocol::{encode_labels, Expiry, Kind, Labels, Limits, PutRequest, Request};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/_.-]{1,40}|\\PC{1,20}".prop_filter("within 256 bytes", |value| value.len() <= 256)
}

fn kind() -> impl Strategy<Value = Kind> {
    (0u8..=4).prop_map(|code| Kind::from_u8(code).unwrap())
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![
        Just(Expiry::Never),
        (1..=EXPIRES_AT_MS_MAX).prop_map(Expiry::AtUnixMs),
        (1..=TTL_MS_MAX).prop_map(Expiry::TtlMs)
    ]
}

#[derive(Debug, Clone)]
struct OwnedPut {
    id: String,
    owner: String,
    scope: String,
    kind: Kind,
    expected_version: Option<u64>,
    expiry: Expiry,
    labels: Vec<(String, String)>,
    secret: Vec<u8>,
}

fn owned_put() -> impl Strategy<Value = OwnedPut> {
    (
        name(),
        name(),
        name(),
        kind(),
        proptest::option::of(any::<u64>()),
        expiry(),
        btree_map(name(), "[a-z0-9]{0,20}", 0..8),
        vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(id, owner, scope, kind, expected_version, expiry, labels, secret)| OwnedPut {
            id,
            owner,
            scope,
            kind,
            expected_version,
            expiry,
            labels: labels.into_iter().collect(),
            secret,
        })
}

impl OwnedPut {
    /// The borrowed request, with `labels` already encoded.
    fn request<'a>(&'a self, labels: &'a [u8]) -> PutRequest<'a> {
        PutRequest {
            id: &self.id,
            owner: &self.owner,
            scope: &self.scope,
            kind: self.kind,
            expected_version: self.expected_version,
            expiry: self.expiry,
            labels: Labels::from_validated(labels),
            secret: &self.secret,
        }
    }
}

fn any_request(put: &OwnedPut, labels: &[u8], choice: u8, number: u64) -> Vec<u8> {
    let key: [u8; 32] = std::array::from_fn(|index| put.secret.get(index).copied().unwrap_or(index as u8));
    let request = match choice % 15 {
        0 => Request::Put(put.request(labels)),
        1 => Request::Get(GetRequest::new(&put.id, number)),
        2 => Request::GetMeta(GetMetaRequest { id: &put.id }),
        3 => Request::Delete(DeleteRequest::new(&put.id, put.expected_version)),
        4 => Request::Hello(HelloRequest {
            protocol_version: number as u16,
            token: &put.secret[..put.secret.len().min(64)],
        }),
        5 => Request::Ping(&put.secret),
        6 if put.secret.is_empty() => Request::RotateKey,
        6 => Request::Rekey(RekeyRequest::Passphrase(&put.secret[..put.secret.len().min(1024)])),
        7 => Request::Rekey(RekeyRequest::Key(&key)),
        8 => Request::Delete(DeleteRequest {
            purge: number.is_multiple_of(2),
            recovery_window_seconds: (number % 2 == 1).then_some(1 + number % RECOVERY_WINDOW_SECONDS_MAX),
            ..DeleteRequest::new(&put.id, put.expected_version)
        }),
        9 => Request::Undelete(UndeleteRequest { id: &put.id }),
        10 => Request::Destroy(DestroyRequest { id: &put.id, version: number.max(1) }),
        11 => Request::Stage(put.request(labels)),
        12 => Request::Promote(PromoteRequest {
            id: &put.id,
            expected_version: put.expected_version,
            grace_period_seconds: (number % 2 == 1).then_some(number % GRACE_PERIOD_SECONDS_MAX),
        }),
        13 => Request::Get(GetRequest::of_stage(&put.id, Stage::ALL[number as usize % Stage::ALL.len()])),
        _ => Request::Stats,
    };
    let mut out = BytesMut::new();
    request.encode(number as u32, &mut out);
    out.to_vec()
}

proptest! {
    #[test]
    fn times_beyond_their_limits_never_decode(
        put in owned_put(),
        at_ms in EXPIRES_AT_MS_MAX + 1..,
        ttl_ms in TTL_MS_MAX + 1..,
        grace in credshard_protocol::op::rotate::GRACE_PERIOD_SECONDS_MAX + 1..,
    ) {
        let labels = BytesMut::new(); // no labels: only the times matter here
        let limits = Limits::default();
        for expiry in [Expiry::AtUnixMs(at_ms), Expiry::TtlMs(ttl_ms)] {
            let request = PutRequest { expiry, ..put.request(&labels) };
            let mut out = BytesMut::new();
            Request::Put(request).encode(1, &mut out);
            let header = frame::check(&out, limits.frame_bytes_max).unwrap().unwrap();
            prop_assert!(Request::decode(header.code, &out[header.body_range()], &limits).is_err());
        }
        let rotate = credshard_protocol::op::rotate::RotateRequest {
            id: &put.id,
            expected_version: None,
            grace_period_seconds: Some(grace),
            secret: &put.secret,
        };
        let mut out = BytesMut::new();
        Request::Rotate(rotate).encode(1, &mut out);
        let header = frame::check(&out, limits.frame_bytes_max).unwrap().unwrap();
        prop_assert!(Request::decode(header.code, &out[header.body_range()], &limits).is_err());
    }

    #[test]
    fn put_round_trips(put in owned_put(), request_id in any::<u32>()) {
        let pairs: Vec<(&str, &str)> = put.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut labels = BytesMut::new();
        encode_labels(&pairs, &mut labels);
        let request = put.request(&labels);
        let mut out = BytesMut::new();
        Request::Put(request).encode(request_id, &mut out);
        let header = frame::check(&out, Limits::default().frame_bytes_max).unwrap().unwrap();
        prop_assert_eq!(header.frame_bytes, out.len());
        prop_assert_eq!(header.request_id, request_id);
        let decoded = Request::decode(header.code, &out[header.body_range()], &Limits::default()).unwrap();
        prop_assert_eq!(&decoded, &Request::Put(request));
        if let Request::Put(decoded) = decoded {
            let round: Vec<(&str, &str)> = decoded.labels.iter().collect();
            prop_assert_eq!(round, pairs);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), code in any::<u8>()) {
        let limits = Limits::default();
        if let Ok(Some(header)) = frame::check(&bytes, limits.frame_bytes_max) {
            prop_assert!(header.frame_bytes <= bytes.len());
            let _ = Request::decode(header.code, &bytes[header.body_range()], &limits);
        }
        let _ = Request::decode(code, &bytes, &limits);
        let _ = GetReply::decode(&mut Reader::new(&bytes));
        let _ = GetMetaReply::decode(&mut Reader::new(&bytes));
        let _ = StatsReply::decode(&mut Reader::new(&bytes));
        let mut buffer = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = ResponseFrame::take(&mut buffer) {
            let _ = frame.into_ok_body();
        }
    }

    #[test]
    fn framing_is_independent_of_chunking(
        puts in vec((owned_put(), any::<u8>(), any::<u64>()), 1..8),
        chunk_sizes in vec(1usize..300, 1..50),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (put, choice, number) in &puts {
            let mut labels = BytesMut::new();
            let pairs: Vec<(&str, &str)> = put.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            encode_labels(&pairs, &mut labels);
            let frame = any_request(put, &labels, *choice, *number);
            expected.push(frame.clone());
            stream.extend(frame);
        }
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        let mut offset = 0;
        let mut sizes = chunk_sizes.iter().cycle();
        while offset < stream.len() {
            let take = (*sizes.next().unwrap()).min(stream.len() - offset);
            buffer.extend_from_slice(&stream[offset..offset + take]);
            offset += take;
            while let Some(header) = frame::check(&buffer, usize::MAX).unwrap() {
                let frame = buffer.split_to(header.frame_bytes);
                Request::decode(header.code, &frame[header.body_range()], &Limits::default()).unwrap();
                frames.push(frame.to_vec());
            }
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(frames, expected);
    }
}
