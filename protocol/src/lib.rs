//! The credshard wire protocol: what a client and a server say to each other, and nothing
//! about how the server stores anything. `docs/protocol.md` is the normative description;
//! the codes and layouts here match it one to one.
//!
//! - [`frame`]: the 10-byte frame header; "is a whole frame buffered?" and header encoding.
//! - [`code`]: op, status, credential-kind and version-state codes.
//! - [`wire`]: body primitives (`str16`, `bytes32`, `opt_u64`) and the in-place [`wire::Reader`].
//! - [`limits`]: size limits a server enforces while decoding.
//! - [`op`]: typed request and reply bodies, one module per op, and the [`op::Request`] enum.
//! - [`secret`]: plaintext that zeroes itself on drop and never prints.
//! - [`client`]: a blocking client and a pipelining tokio client.
//! - [`error`]: the [`ClientError`] every client call can return.

#![forbid(unsafe_code)]

pub mod client;
pub mod code;
pub mod error;
pub mod frame;
pub mod limits;
pub mod op;
pub mod secret;
pub mod wire;

#[cfg(feature = "tokio")]
pub use client::asynchronous::AsyncClient;
pub use client::blocking::Client;
#[cfg(feature = "tls")]
pub use client::tls::ClientTls;
pub use code::{Kind, Op, Status, VersionState};
pub use error::ClientError;
pub use limits::Limits;
pub use op::labels::{encode_labels, Labels, EMPTY_LABELS};
pub use op::put::{Expiry, PutRequest};
pub use op::Request;
pub use secret::Secret;
