//! No plaintext secret at rest: not in the shard maps' stored bytes, not in the data dir.

mod common;

use common::{ids_on_every_shard, put, walk, TestServer};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[test]
fn shard_maps_hold_only_ciphertext() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let secret = b"PLAINTEXT-CANARY-6d1f0c2b-never-store-me";
    for id in ids_on_every_shard(2, 5) {
        client.put(&put(&id, secret)).unwrap();
        assert_eq!(client.get(&id).unwrap().secret.expose(), secret, "the secret round-trips");
    }
    let mut records = 0;
    server.store().for_each_record(|record| {
        records += 1;
        let bytes = record.archive_bytes();
        assert!(!contains(bytes, secret), "plaintext found in the archive of {record:?}");
        assert!(!contains(bytes, hex_lower(secret).as_bytes()), "hex plaintext in {record:?}");
        assert_eq!(record.credential().ciphertext.len(), secret.len(), "the archive holds the ciphertext");
    });
    assert_eq!(records, 10);

    for entry in walk(server.data_dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, secret), "plaintext in {}", entry.display());
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
