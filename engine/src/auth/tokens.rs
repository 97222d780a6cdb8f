//! The tokens file: TOML, one `[[token]]` table per token.
//!
//! ```toml
//! [[token]]
//! id = "billing-reader"        # what the audit log records; unique
//! sha256 = "9f86d0…"            # hex SHA-256 of the token; the token itself is never stored
//! ops = ["read", "list"]       # read, read-meta, write, rotate, delete, list, admin, or "*"
//! owners = ["billing"]         # optional: any owner when absent
//! scopes = ["prod/billing/"]   # optional: scope prefixes; any scope when absent
//! ```
//!
//! `credshard token new` prints a fresh random token and its table.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::auth::{hash_token, Acl, Permission, Principal, TokenHash};
use crate::error::EngineError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    id: String,
    sha256: String,
    ops: Vec<String>,
    /// Absent: any owner. Present, it must not be empty (an empty list reads as "none").
    owners: Option<Vec<String>>,
    /// Absent: any scope.
    scopes: Option<Vec<String>>,
}

/// The tokens in force: each token's hash and the principal it authenticates as.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: Vec<(TokenHash, Arc<Principal>)>,
}

impl TokenSet {
    /// Reads and validates a tokens file.
    ///
    /// # Errors
    /// [`EngineError::Config`] naming the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<TokenSet, EngineError> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |reason: String| EngineError::Config(format!("tokens file {}: {reason}", path.display()));
        let mode = std::fs::metadata(path).map_err(|error| fail(error.to_string()))?.permissions().mode();
        // Whoever can write the file can grant themselves every permission.
        if mode & 0o022 != 0 {
            return Err(fail(format!("writable by other users (mode {:o}): `chmod go-w` it", mode & 0o777)));
        }
        let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
        TokenSet::parse(&text)
            .map_err(|reason| EngineError::Config(format!("tokens file {}: {reason}", path.display())))
    }

    /// Parses and validates a tokens file's text.
    ///
    /// # Errors
    /// What is wrong, as one line.
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let file: File = toml::from_str(text).map_err(|error| error.message().to_owned())?;
        let mut entries: Vec<(TokenHash, Arc<Principal>)> = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let (hash, principal) = entry.validate()?;
            if entries.iter().any(|(_, other)| other.id == principal.id) {
                return Err(format!("token id {:?} appears twice", principal.id));
            }
            if entries.iter().any(|(other, _)| *other == hash) {
                return Err(format!("token {:?} has the same sha256 as another token", principal.id));
            }
            entries.push((hash, Arc::new(principal)));
        }
        Ok(TokenSet { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token hashes to `hash`. Compares against every entry, each in
    /// constant time, so the time taken does not depend on which entry (if any) matches or on
    /// how many leading bytes agree.
    pub fn find(&self, hash: &TokenHash) -> Option<Arc<Principal>> {
        let mut found = None;
        for (candidate, principal) in &self.entries {
            if constant_time_eq(candidate, hash) {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// Equality of two hashes without a data-dependent branch or early exit (`subtle`).
fn constant_time_eq(left: &TokenHash, right: &TokenHash) -> bool {
    use subtle::ConstantTimeEq;
    left.ct_eq(right).into()
}

impl TokenEntry {
    fn validate(self) -> Result<(TokenHash, Principal), String> {
        let id = self.id;
        if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("token id {id:?} must be 1 to 128 printable ASCII characters"));
        }
        let bytes = hex::decode(&self.sha256)
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .ok_or_else(|| format!("token {id:?}: sha256 must be 64 hex digits"))?;
        let hash: TokenHash = bytes.try_into().expect("checked length");
        if hash == hash_token(b"") {
            return Err(format!(
                "token {id:?}: sha256 is that of the empty token, which every client without a token sends"
            ));
        }
        if self.ops.is_empty() {
            return Err(format!("token {id:?}: ops is empty (it could do nothing)"));
        }
        let mut permissions = Vec::new();
        for op in &self.ops {
            if op == "*" {
                permissions.extend(Permission::ALL);
                continue;
            }
            let known = Permission::ALL.map(Permission::name).join(", ");
            let permission = Permission::from_name(op)
                .ok_or_else(|| format!("token {id:?}: unknown op {op:?} (known: {known}, *)"))?;
            permissions.push(permission);
        }
        let owners = restriction(&id, "owners", "owner", self.owners)?;
        let scopes = restriction(&id, "scopes", "scope prefix", self.scopes)?;
        Ok((hash, Principal { id, acl: Acl::new(&permissions, owners, scopes) }))
    }
}

/// An `owners` or `scopes` list: absent means any (empty vector); present, it must name at
/// least one non-empty value, so that `[]` or `[""]` cannot be misread as "none" or "any".
fn restriction(id: &str, field: &str, item: &str, list: Option<Vec<String>>) -> Result<Vec<String>, String> {
    match list {
        None => Ok(Vec::new()),
        Some(list) if list.is_empty() => {
            Err(format!("token {id:?}: {field} is empty (leave it out to allow any {item})"))
        }
        Some(list) if list.iter().any(String::is_empty) => {
            Err(format!("token {id:?}: an empty {item} (leave {field} out to allow any)"))
        }
        Some(list) => Ok(list),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, token: &[u8], rest: &str) -> String {
        format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n", hex::encode(hash_token(token)))
    }

    #[test]
    fn a_tokens_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, table("admin", b"t", "ops = [\"*\"]")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(TokenSet::load(&path).unwrap().len(), 1, "readable by others is fine: hashes only");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let Err(refused) = TokenSet::load(&path) else { panic!("group-writable is refused") };
        let refused = refused.to_string();
        assert!(refused.contains("writable by other users"), "{refused}");
    }

    #[test]
    fn finds_each_token_by_its_hash() {
        let text = table("reader", b"t1", "ops = [\"read\"]\nowners = [\"billing\"]")
            + &table("admin", b"t2", "ops = [\"*\"]\nscopes = [\"prod/\"]");
        let set = TokenSet::parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        let reader = set.find(&hash_token(b"t1")).unwrap();
        assert_eq!(reader.id, "reader");
        assert_eq!(reader.acl.owners(), ["billing"]);
        assert!(reader.acl.allows(Permission::ReadMeta) && !reader.acl.allows(Permission::Write));
        let admin = set.find(&hash_token(b"t2")).unwrap();
        assert!(Permission::ALL.iter().all(|p| admin.acl.allows(*p)));
        assert_eq!(admin.acl.scopes(), ["prod/"]);
        assert!(set.find(&hash_token(b"t3")).is_none());
        assert!(set.find(&hash_token(b"")).is_none());
    }

    #[test]
    fn refuses_invalid_files_with_a_reason() {
        let cases = [
            (table("a", b"x", "ops = [\"fly\"]"), "unknown op"),
            (table("a", b"x", "ops = []"), "ops is empty"),
            (table("a", b"x", "ops = [\"read\"]\ncolour = 1"), "unknown field"),
            (table("a", b"x", "ops = [\"read\"]") + &table("a", b"y", "ops = [\"read\"]"), "twice"),
            (table("a", b"x", "ops = [\"read\"]") + &table("b", b"x", "ops = [\"read\"]"), "same sha256"),
            (table("a b", b"x", "ops = [\"read\"]"), "printable"),
            (table("a", b"x", "ops = [\"read\"]\nowners = [\"\"]"), "empty owner"),
            (table("a", b"x", "ops = [\"read\"]\nowners = []"), "owners is empty"),
            (table("a", b"x", "ops = [\"read\"]\nscopes = []"), "scopes is empty"),
            (table("a", b"", "ops = [\"read\"]"), "empty token"),
            ("[[token]]\nid = \"a\"\nsha256 = \"abc\"\nops = [\"read\"]\n".to_owned(), "64 hex"),
            ("[[token]]\nid = \"a\"\nops = [\"read\"]\n".to_owned(), "sha256"),
            ("token = 3".to_owned(), "invalid type"),
        ];
        for (text, expected) in cases {
            let error = TokenSet::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        assert!(TokenSet::parse("").unwrap().is_empty(), "an empty file is valid: nobody gets in");
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let base = hash_token(b"a");
        assert!(constant_time_eq(&base, &base));
        for index in [0, 15, 31] {
            let mut other = base;
            other[index] ^= 1;
            assert!(!constant_time_eq(&base, &other), "byte {index}");
        }
    }
}
