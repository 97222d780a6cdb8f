//! `credshard token new`: a random token, and the `[[token]]` table for the tokens file that
//! holds only its hash.

use zeroize::Zeroizing;

/// Prints a new token and its table.
pub fn new(id: &str, ops: &[String], owners: &[String], scopes: &[String]) -> anyhow::Result<()> {
    let mut random = Zeroizing::new([0u8; 32]);
    getrandom::fill(random.as_mut()).map_err(|error| anyhow::anyhow!("reading random bytes: {error}"))?;
    let token = Zeroizing::new(format!("cst_{}", hex::encode(random.as_ref())));
    let table = new_token_table(id, token.as_bytes(), ops, owners, scopes)?;
    println!("token: {}", token.as_str());
    println!("(shown once: give it to the client, e.g. in CREDSHARD_TOKEN)\n");
    print!("{table}");
    Ok(())
}

/// One `[[token]]` table as the tokens file holds it.
#[derive(serde::Serialize)]
struct TokenTable<'a> {
    id: &'a str,
    sha256: String,
    ops: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    owners: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    scopes: &'a [String],
}

/// The tokens file's shape: an array of tables.
#[derive(serde::Serialize)]
struct TokensFile<'a> {
    token: [TokenTable<'a>; 1],
}

/// The `[[token]]` table for a token, after checking it parses as the server will parse it.
fn new_token_table(
    id: &str,
    token: &[u8],
    ops: &[String],
    owners: &[String],
    scopes: &[String],
) -> anyhow::Result<String> {
    let sha256 = hex::encode(credshard_engine::auth::hash_token(token));
    let file = TokensFile { token: [TokenTable { id, sha256, ops, owners, scopes }] };
    let table = toml::to_string(&file)?;
    credshard_engine::auth::TokenSet::parse(&table).map_err(|reason| anyhow::anyhow!("{reason}"))?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_through_the_servers_parser_whatever_the_names_hold() {
        let odd = vec!["quote\"back\\slash".to_owned(), "new\nline\u{7}".to_owned()];
        let table = new_token_table("id-\"x\"", b"token", &["read".to_owned()], &odd, &[]).unwrap();
        assert!(table.starts_with("[[token]]\n"), "{table}");
        assert!(!table.contains("scopes"), "empty lists are left out: {table}");
        let parsed: toml::Value = toml::from_str(&table).unwrap();
        let entry = &parsed["token"][0];
        assert_eq!(entry["id"].as_str(), Some("id-\"x\""));
        assert_eq!(entry["owners"][1].as_str(), Some("new\nline\u{7}"));
    }

    #[test]
    fn an_unknown_op_is_refused_before_anything_is_printed() {
        assert!(new_token_table("id", b"token", &["fly".to_owned()], &[], &[]).is_err());
    }
}
