//! One server per data dir and per address, with real processes: a second `credshard serve`
//! on a data dir in use, or on an address another process listens on, refuses to start and
//! says why; the first one is not disturbed.

mod common;

use common::process::{ProcessDirs, ServeProcess};
use common::put;
use credshard_protocol::Client;

#[test]
fn a_second_server_on_a_data_dir_in_use_is_refused_naming_the_holder() {
    let dirs = ProcessDirs::new();
    let stderr = dirs.dir.path().join("second.stderr");
    let first = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(first.address.as_str()).unwrap();
    for index in 0..200 {
        client.put(&put(&format!("id-{index}"), b"first")).unwrap();
    }

    let refused = ServeProcess::try_start("127.0.0.1:0", &dirs.data_dir, &dirs.key, &[], &stderr)
        .err()
        .expect("a second server on the same data dir must not start");
    let holder = format!("pid {}", first.pid());
    assert!(refused.contains("in use by another credshard server") && refused.contains(&holder), "{refused}");
    // The first server is untouched and keeps serving.
    client.put(&put("after-refusal", b"first")).unwrap();

    // The kernel drops the lock with its holder, however it dies: kill -9 leaves no stale lock.
    drop(client);
    drop(first);
    let second = ServeProcess::try_start("127.0.0.1:0", &dirs.data_dir, &dirs.key, &[], &stderr)
        .expect("the data dir is free once its server is gone");
    let mut client = Client::connect(second.address.as_str()).unwrap();
    for index in 0..200 {
        assert_eq!(client.get(&format!("id-{index}")).unwrap().secret.expose(), b"first");
    }
    assert_eq!(client.get("after-refusal").unwrap().secret.expose(), b"first");
}

#[test]
fn a_server_on_an_address_another_process_listens_on_is_refused() {
    let first_dirs = ProcessDirs::new();
    let second_dirs = ProcessDirs::new();
    let stderr = second_dirs.dir.path().join("second.stderr");
    let first = ServeProcess::start(&first_dirs.data_dir, &first_dirs.key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(first.address.as_str()).unwrap();
    client.put(&put("only-on-the-first", b"value")).unwrap();

    // Another credshard (its own data dir) on the first one's address.
    let refused =
        ServeProcess::try_start(&first.address, &second_dirs.data_dir, &second_dirs.key, &[], &stderr)
            .err()
            .expect("a second credshard on the same address must not start");
    assert!(refused.contains("already in use by another process"), "{refused}");

    // Every fresh connection still reaches the first server (none land on a second one).
    for _ in 0..40 {
        let mut fresh = Client::connect(first.address.as_str()).unwrap();
        assert_eq!(fresh.get("only-on-the-first").unwrap().secret.expose(), b"value");
    }

    // Any other process's listener counts too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = other.local_addr().unwrap().to_string();
    let refused = ServeProcess::try_start(&address, &second_dirs.data_dir, &second_dirs.key, &[], &stderr)
        .err()
        .expect("an address held by another program must not be shared");
    assert!(refused.contains("already in use by another process"), "{refused}");
    drop(other);
    ServeProcess::try_start(&address, &second_dirs.data_dir, &second_dirs.key, &[], &stderr)
        .expect("the address is free again");
}
