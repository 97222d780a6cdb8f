//! TLS to the database: `--store` with `sslmode=require` and `--store-ca` against a real
//! PostgreSQL serving TLS; the session is encrypted (pg_stat_ssl says so), and a server whose
//! certificate the CA did not sign is refused at start.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::postgres::Cluster;
use common::{put, TestServer};
use credshard_engine::crypto::MasterKey;

#[test]
fn the_store_speaks_tls_to_a_database_that_asks_for_it_and_checks_its_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let Some(cluster) = Cluster::start_with("tls", |dir| {
        std::fs::write(dir.join("server.crt"), &cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &key_pem).unwrap();
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        )
    }) else {
        return;
    };
    let ca = cluster.dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let url = format!("{} sslmode=require", cluster.url());
    let server = TestServer::try_start_with_key(1, MasterKey::generate(), |config| {
        config.store = Some(url.clone());
        config.store_ca = Some(ca.clone());
    })
    .expect("an instance on the TLS database starts");
    let mut client = server.client();
    client.put(&put("over-tls", b"secret")).unwrap();
    assert_eq!(client.get("over-tls").unwrap().secret.expose(), b"secret");
    let sessions = common::postgres::on_runtime({
        let url = cluster.url();
        async move {
            let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            admin
                .query(
                    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                     WHERE a.application_name = 'credshard'",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, bool>(0))
                .collect::<Vec<_>>()
        }
    });
    assert!(
        !sessions.is_empty() && sessions.iter().all(|&ssl| ssl),
        "credshard's sessions use TLS: {sessions:?}"
    );
    drop(server);

    // A CA that did not sign the database's certificate: refused at start.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = cluster.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, stranger.cert.pem()).unwrap();
    let refused = TestServer::try_start_with_key(1, MasterKey::generate(), |config| {
        config.store = Some(url.clone());
        config.store_ca = Some(other_ca.clone());
    });
    let error = refused.err().expect("an unverifiable database is refused").to_string();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("tls") || error.contains("TLS"),
        "{error}"
    );
}
