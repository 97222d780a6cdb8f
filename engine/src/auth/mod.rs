//! Who may do what.
//!
//! - [`tokens`]: the tokens file (`--tokens PATH`): per token, the SHA-256 of the token (never
//!   the token itself), an id for the audit log, and an [`Acl`].
//! - [`Authenticator`]: shared by every executor; resolves a HELLO token to a [`Principal`] in
//!   constant time and swaps in a reloaded tokens file (SIGHUP) without dropping connections.
//! - [`Session`]: one connection's authentication state. It keeps the token's hash, so a
//!   reload that changes or removes the token takes effect on the next request.
//!
//! Without a tokens file the server is open: every connection is the [`Principal::open`]
//! principal, which may do everything (the server then refuses to listen beyond loopback).

pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use credshard_protocol::Op;
use sha2::{Digest, Sha256};

pub use tokens::TokenSet;

use crate::error::EngineError;

/// The SHA-256 of a token.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

/// An operation class an ACL grants. Names as written in the tokens file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Permission {
    /// GET and BATCH_GET (secrets); implies `read-meta`.
    Read = 1 << 0,
    /// GET_META: metadata only.
    ReadMeta = 1 << 1,
    /// PUT.
    Write = 1 << 2,
    Rotate = 1 << 3,
    /// DELETE, UNDELETE and DESTROY.
    Delete = 1 << 4,
    List = 1 << 5,
    /// STATS.
    Admin = 1 << 6,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::Read,
        Permission::ReadMeta,
        Permission::Write,
        Permission::Rotate,
        Permission::Delete,
        Permission::List,
        Permission::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadMeta => "read-meta",
            Permission::Write => "write",
            Permission::Rotate => "rotate",
            Permission::Delete => "delete",
            Permission::List => "list",
            Permission::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|permission| permission.name() == name)
    }

    /// The permission `op` needs; `None` for HELLO and PING, which any session may send
    /// (HELLO to authenticate, PING once authenticated).
    pub fn for_op(op: Op) -> Option<Permission> {
        match op {
            Op::Hello | Op::Ping => None,
            Op::Get | Op::BatchGet => Some(Permission::Read),
            Op::GetMeta | Op::Watch | Op::GetPolicy => Some(Permission::ReadMeta),
            Op::Put | Op::Stage | Op::SetPolicy => Some(Permission::Write),
            Op::Rotate | Op::Promote => Some(Permission::Rotate),
            Op::Delete | Op::Undelete | Op::Destroy => Some(Permission::Delete),
            Op::List => Some(Permission::List),
            Op::Stats | Op::RotateKey | Op::Rekey => Some(Permission::Admin),
        }
    }
}

/// What one token may do: a set of permissions, on credentials whose owner is one of `owners`
/// (any owner when empty) and whose scope starts with one of `scopes` (any scope when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    permissions: u8,
    owners: Vec<String>,
    scopes: Vec<String>,
}

impl Acl {
    pub fn new(permissions: &[Permission], owners: Vec<String>, scopes: Vec<String>) -> Acl {
        let mut bits = permissions.iter().fold(0u8, |bits, permission| bits | *permission as u8);
        if bits & Permission::Read as u8 != 0 {
            bits |= Permission::ReadMeta as u8;
        }
        Acl { permissions: bits, owners, scopes }
    }

    /// Everything on every credential.
    pub fn everything() -> Acl {
        Acl::new(&Permission::ALL, Vec::new(), Vec::new())
    }

    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions & permission as u8 != 0
    }

    /// True when the op is granted at all (credential checks come later).
    pub fn allows_op(&self, op: Op) -> bool {
        Permission::for_op(op).is_none_or(|permission| self.allows(permission))
    }

    /// True when the ACL limits neither owners nor scopes.
    #[inline]
    pub fn reaches_everything(&self) -> bool {
        self.owners.is_empty() && self.scopes.is_empty()
    }

    /// True when a credential with this owner and scope is within reach.
    pub fn covers(&self, owner: &str, scope: &str) -> bool {
        (self.owners.is_empty() || self.owners.iter().any(|allowed| allowed == owner))
            && (self.scopes.is_empty() || self.scopes.iter().any(|prefix| scope.starts_with(prefix.as_str())))
    }

    /// True when every credential a LIST with these filters can return is within reach: the
    /// owner filter must name an allowed owner, and the scope filter (LIST matches a scope
    /// exactly) must start with an allowed prefix.
    pub fn covers_list(&self, owner: Option<&str>, scope: Option<&str>) -> bool {
        let owner_ok =
            self.owners.is_empty() || owner.is_some_and(|owner| self.owners.iter().any(|o| o == owner));
        let scope_ok = self.scopes.is_empty()
            || scope
                .is_some_and(|scope| self.scopes.iter().any(|allowed| scope.starts_with(allowed.as_str())));
        owner_ok && scope_ok
    }

    pub fn permissions(&self) -> impl Iterator<Item = Permission> + '_ {
        Permission::ALL.into_iter().filter(|permission| self.allows(*permission))
    }

    pub fn owners(&self) -> &[String] {
        &self.owners
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

/// An authenticated identity: the token's id (what the audit log records) and its ACL.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub acl: Acl,
}

impl Principal {
    /// The id of every session on a server without a tokens file.
    pub const OPEN_ID: &'static str = "open";

    pub fn open() -> Principal {
        Principal { id: Principal::OPEN_ID.to_owned(), acl: Acl::everything() }
    }
}

/// Resolves HELLO tokens; shared by every executor.
pub struct Authenticator {
    mode: Mode,
    /// Bumped by every reload, so sessions know to look their token up again.
    generation: AtomicU64,
}

enum Mode {
    Open(Arc<Principal>),
    Tokens { path: PathBuf, tokens: RwLock<Arc<TokenSet>> },
}

impl Authenticator {
    /// A server without tokens: everyone is [`Principal::open`].
    pub fn open() -> Authenticator {
        Authenticator { mode: Mode::Open(Arc::new(Principal::open())), generation: AtomicU64::new(0) }
    }

    /// Tokens from `path`.
    ///
    /// # Errors
    /// [`EngineError::Config`] when the file cannot be read or is invalid.
    pub fn from_file(path: &Path) -> Result<Authenticator, EngineError> {
        let tokens = TokenSet::load(path)?;
        Ok(Authenticator {
            mode: Mode::Tokens { path: path.to_owned(), tokens: RwLock::new(Arc::new(tokens)) },
            generation: AtomicU64::new(0),
        })
    }

    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open(_))
    }

    /// Re-reads the tokens file. On error the tokens in force stay in force.
    ///
    /// # Errors
    /// [`EngineError::Config`] for an unreadable or invalid file; nothing for an open server.
    pub fn reload(&self) -> Result<usize, EngineError> {
        let Mode::Tokens { path, tokens } = &self.mode else { return Ok(0) };
        let fresh = TokenSet::load(path)?;
        let count = fresh.len();
        *tokens.write().expect("tokens lock") = Arc::new(fresh);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(count)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn resolve(&self, hash: &TokenHash) -> Option<Arc<Principal>> {
        match &self.mode {
            Mode::Open(principal) => Some(Arc::clone(principal)),
            Mode::Tokens { tokens, .. } => tokens.read().expect("tokens lock").find(hash),
        }
    }

    /// A new connection's session: authenticated at once on an open server.
    pub fn session(&self) -> Session {
        let principal = match &self.mode {
            Mode::Open(principal) => Some(Arc::clone(principal)),
            Mode::Tokens { .. } => None,
        };
        Session {
            principal,
            token_hash: None,
            generation: self.generation(),
            revoked_token_id: None,
            unauthenticated_refusals: 0,
        }
    }
}

/// One connection's authentication state.
pub struct Session {
    principal: Option<Arc<Principal>>,
    /// The hash of the token the last successful HELLO presented.
    token_hash: Option<TokenHash>,
    generation: u64,
    /// The id of this session's token after a reload removed it, for the audit log.
    revoked_token_id: Option<Box<str>>,
    /// Requests refused since the session was last authenticated (failed HELLOs included).
    unauthenticated_refusals: u32,
}

impl Session {
    /// Authenticates with `token`. A refused token also ends any earlier authentication.
    pub fn hello(&mut self, authenticator: &Authenticator, token: &[u8]) -> Option<&Arc<Principal>> {
        let hash = hash_token(token);
        self.generation = authenticator.generation();
        self.principal = authenticator.resolve(&hash);
        self.token_hash = self.principal.as_ref().map(|_| hash);
        if self.principal.is_some() {
            self.revoked_token_id = None;
            self.unauthenticated_refusals = 0;
        }
        self.principal.as_ref()
    }

    /// Counts a request refused because the session is not authenticated; returns how many
    /// there have been since it last was.
    pub fn count_refusal(&mut self) -> u32 {
        self.unauthenticated_refusals = self.unauthenticated_refusals.saturating_add(1);
        self.unauthenticated_refusals
    }

    /// Requests refused since the session was last authenticated.
    pub fn unauthenticated_refusals(&self) -> u32 {
        self.unauthenticated_refusals
    }

    /// The token id the audit log records for this session while it is not authenticated:
    /// that of its revoked token, if a reload removed it, else `"-"`.
    pub fn unauthenticated_audit_id(&self) -> &str {
        self.revoked_token_id.as_deref().unwrap_or("-")
    }

    /// True after a successful HELLO (or from the start on an open server), as of the last
    /// request; a reload takes effect at the next [`Session::principal`].
    pub fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// The principal this session acts as, looked up again if the tokens were reloaded since
    /// (a removed token ends the session's authentication).
    pub fn principal(&mut self, authenticator: &Authenticator) -> Option<&Arc<Principal>> {
        let generation = authenticator.generation();
        if generation != self.generation {
            self.generation = generation;
            let resolved = self.token_hash.as_ref().and_then(|hash| authenticator.resolve(hash));
            if let (None, Some(former)) = (&resolved, &self.principal) {
                self.revoked_token_id = Some(former.id.as_str().into());
            }
            self.principal = resolved;
        }
        self.principal.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(permissions: &[Permission], owners: &[&str], scopes: &[&str]) -> Acl {
        Acl::new(
            permissions,
            owners.iter().map(|s| s.to_string()).collect(),
            scopes.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn read_implies_read_meta_and_nothing_else() {
        let reader = acl(&[Permission::Read], &[], &[]);
        assert!(reader.allows_op(Op::Get) && reader.allows_op(Op::BatchGet) && reader.allows_op(Op::GetMeta));
        for op in [Op::Put, Op::Rotate, Op::Delete, Op::List, Op::Stats] {
            assert!(!reader.allows_op(op), "{op:?}");
        }
        let meta = acl(&[Permission::ReadMeta], &[], &[]);
        assert!(meta.allows_op(Op::GetMeta) && !meta.allows_op(Op::Get));
        assert!(meta.allows_op(Op::Ping) && meta.allows_op(Op::Hello));
    }

    #[test]
    fn owners_and_scope_prefixes_limit_credentials() {
        let limited = acl(&[Permission::Read], &["billing", "ops"], &["prod/billing/", "staging/"]);
        assert!(limited.covers("billing", "prod/billing/db"));
        assert!(limited.covers("ops", "staging/x"));
        assert!(!limited.covers("search", "prod/billing/db"));
        assert!(!limited.covers("billing", "prod/search/db"));
        assert!(!limited.covers("billing", "prod/billing"), "a prefix is matched byte for byte");
        let any = acl(&[Permission::Read], &[], &[]);
        assert!(any.covers("anyone", ""));
    }

    #[test]
    fn list_filters_must_stay_inside_the_acl() {
        let limited = acl(&[Permission::List], &["billing"], &["prod/"]);
        assert!(limited.covers_list(Some("billing"), Some("prod/billing/")));
        assert!(!limited.covers_list(Some("billing"), None), "no scope filter reaches other scopes");
        assert!(!limited.covers_list(None, Some("prod/")), "no owner filter reaches other owners");
        assert!(!limited.covers_list(Some("billing"), Some("pro")), "a wider prefix");
        assert!(!limited.covers_list(Some("search"), Some("prod/")));
        let owners_only = acl(&[Permission::List], &["billing"], &[]);
        assert!(owners_only.covers_list(Some("billing"), None));
        assert!(acl(&[Permission::List], &[], &[]).covers_list(None, None));
    }

    #[test]
    fn open_sessions_are_authenticated_from_the_start() {
        let authenticator = Authenticator::open();
        let mut session = authenticator.session();
        assert_eq!(session.principal(&authenticator).unwrap().id, Principal::OPEN_ID);
        assert!(session.hello(&authenticator, b"anything").is_some());
    }

    #[test]
    fn sessions_follow_reloads_of_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let write = |ops: &str| {
            let text = format!(
                "[[token]]\nid = \"app\"\nsha256 = \"{}\"\nops = [{ops}]\n",
                hex::encode(hash_token(b"secret-token"))
            );
            std::fs::write(&path, text).unwrap();
        };
        write("\"read\"");
        let authenticator = Authenticator::from_file(&path).unwrap();
        let mut session = authenticator.session();
        assert!(session.principal(&authenticator).is_none(), "not authenticated before HELLO");
        assert!(session.hello(&authenticator, b"wrong-token").is_none());
        assert!(session.hello(&authenticator, b"secret-token").is_some());
        assert!(!session.principal(&authenticator).unwrap().acl.allows(Permission::Write));

        write("\"read\", \"write\"");
        authenticator.reload().unwrap();
        assert!(session.principal(&authenticator).unwrap().acl.allows(Permission::Write));

        std::fs::write(&path, "").unwrap();
        authenticator.reload().unwrap();
        assert!(session.principal(&authenticator).is_none(), "a removed token is revoked at once");

        std::fs::write(&path, "not toml [").unwrap();
        assert!(authenticator.reload().is_err(), "an invalid file is refused, the old one stays");
    }
}
