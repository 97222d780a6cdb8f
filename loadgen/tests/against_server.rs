//! The real loadgen binary against a real credshard server (in process, 2 shards, ephemeral
//! port): a short run completes with verified reads and consistent JSON, and an unreachable
//! target or a bad argument exits with code 2.

mod common;

use common::{number, LOADGEN};

use std::process::Command;

#[test]
fn short_run_against_a_real_server() {
    let (server, data_dir) = common::start_credshard();
    let json_path = data_dir.path().join("run.json");
    let output = Command::new(LOADGEN)
        .arg("--target")
        .arg(format!("credshard://{}", server.local_address()))
        .args(["--connections", "8", "--pipeline", "4", "--duration", "1", "--warmup", "0", "--keys", "500"])
        .args(["--mix", "get=80,put=15,get_meta=5", "--value-size", "128", "--threads", "2", "--json"])
        .arg(&json_path)
        .arg("--plot")
        .arg(data_dir.path().join("run.svg"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = std::fs::read_to_string(&json_path).unwrap();
    let chart = std::fs::read_to_string(data_dir.path().join("run.svg")).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 1, "{chart}");
    // Two results overlaid in one chart.
    let overlay = data_dir.path().join("overlay.svg");
    let plotted = Command::new(LOADGEN)
        .arg("plot")
        .arg("--out")
        .arg(&overlay)
        .arg(&json_path)
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(plotted.status.success(), "{}", String::from_utf8_lossy(&plotted.stderr));
    assert_eq!(std::fs::read_to_string(&overlay).unwrap().matches("<polyline").count(), 2);
    let missing = Command::new(LOADGEN)
        .args(["plot", "--out"])
        .arg(&overlay)
        .arg(data_dir.path().join("absent.json"))
        .output()
        .unwrap();
    common::assert_exit_2_one_line(&missing);
    for field in [
        "target",
        "connections",
        "pipeline",
        "duration_s",
        "ops",
        "ops_per_sec",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
    ] {
        assert!(common::report(&json).get(field).is_some(), "{field} missing from {json}");
    }
    let ops = number(&json, "ops");
    assert!(ops > 0.0);
    assert_eq!(number(&json, "errors"), 0.0, "verified reads and no server errors: {json}");
    let expected = number(&json, "ops_per_sec") * number(&json, "duration_s");
    assert!((ops - expected).abs() <= ops * 0.01 + 1.0, "ops {ops} vs ops_per_sec × duration {expected}");
    let percentiles: Vec<f64> =
        ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].iter().map(|name| number(&json, name)).collect();
    assert!(
        percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "percentiles are monotonic: {percentiles:?}"
    );
    // The server saw the preload and the run.
    assert!(server.store().len() >= 500);
    server.join().unwrap();
}

#[test]
fn tls_target_with_a_token() {
    let files = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key, tokens) =
        (files.path().join("cert.pem"), files.path().join("key.pem"), files.path().join("tokens.toml"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let token = "cst_loadgen-test-token";
    let hash = credshard_engine::auth::hash_token(token.as_bytes());
    let table = format!("[[token]]\nid = \"loadgen\"\nsha256 = \"{}\"\nops = [\"*\"]\n", hex(&hash));
    std::fs::write(&tokens, table).unwrap();
    let (server, data_dir) = common::start_credshard_with(|config| {
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(key);
        config.tokens = Some(tokens);
    });
    let json_path = data_dir.path().join("tls.json");
    let target = format!("credshards://localhost:{}", server.local_address().port());
    let run = |token: Option<&str>, ca: Option<&std::path::Path>| {
        let mut command = Command::new(LOADGEN);
        command
            .args(["--target", &target, "--connections", "4", "--pipeline", "4", "--duration", "1"])
            .args(["--warmup", "0", "--keys", "200", "--mix", "get=90,put=10", "--threads", "1", "--json"])
            .arg(&json_path)
            .env_remove("CREDSHARD_TOKEN")
            .env_remove("CREDSHARD_TLS_CA");
        if let Some(token) = token {
            command.env("CREDSHARD_TOKEN", token);
        }
        if let Some(ca) = ca {
            command.arg("--tls-ca").arg(ca);
        }
        command.output().unwrap()
    };
    let output = run(Some(token), Some(&cert));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = std::fs::read_to_string(&json_path).unwrap();
    assert!(number(&json, "ops") > 0.0);
    assert_eq!(number(&json, "errors"), 0.0, "{json}");
    assert!(json.contains("credshards://"), "{json}");

    let no_ca = common::assert_exit_2_one_line(&run(Some(token), None));
    assert!(no_ca.contains("--tls-ca"), "{no_ca}");
    let no_token = common::assert_exit_2_one_line(&run(None, Some(&cert)));
    assert!(no_token.contains("UNAUTHORIZED"), "{no_token}");
    server.join().unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn zipf_open_loop_with_rotate_and_batch_get() {
    let (server, data_dir) = common::start_credshard();
    let json_path = data_dir.path().join("run.json");
    let output = Command::new(LOADGEN)
        .arg("--target")
        .arg(format!("credshard://{}", server.local_address()))
        .args(["--connections", "4", "--pipeline", "4", "--duration", "1", "--warmup", "0", "--keys", "500"])
        .args(["--distribution", "zipf:0.99", "--mix", "get=70,put=10,rotate=10,batch_get:10=10"])
        .args(["--rate", "2000", "--value-size", "128", "--threads", "2", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = std::fs::read_to_string(&json_path).unwrap();
    assert_eq!(number(&json, "errors"), 0.0, "verified reads and no server errors: {json}");
    let ops = number(&json, "ops");
    assert!(ops > 1000.0 && ops <= 2100.0, "about 2000 ops at --rate 2000 for 1 s: {json}");
    let report = common::report(&json);
    assert_eq!(report["distribution"], "zipf:0.99", "{json}");
    assert_eq!(report["rate"], 2000.0, "{json}");
    assert!(number(&json, "per_op.batch_get.ops") > 0.0, "{json}");
    server.join().unwrap();
}

#[test]
fn deletes_make_not_found_an_outcome_not_an_error() {
    let (server, data_dir) = common::start_credshard();
    let json_path = data_dir.path().join("run.json");
    let output = Command::new(LOADGEN)
        .arg("--target")
        .arg(format!("credshard://{}", server.local_address()))
        .args(["--connections", "4", "--pipeline", "2", "--duration", "0.5", "--warmup", "0", "--keys", "50"])
        .args(["--mix", "get=40,put=20,rotate=10,delete=20,batch_get:5=10", "--threads", "2", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = std::fs::read_to_string(&json_path).unwrap();
    assert_eq!(number(&json, "errors"), 0.0, "{json}");
    assert!(number(&json, "ops") > 0.0, "{json}");
    assert!(number(&json, "outcomes_by_kind.not_found_after_delete") > 0.0, "{json}");
    server.join().unwrap();
}

#[test]
fn redis_only_ops_are_refused_before_connecting() {
    let (_guard, address) = common::unreachable_address();
    for mix in ["get=1,rotate=1", "get=1,delete=1", "batch_get:5=1"] {
        let output = Command::new(LOADGEN)
            .args(["--target", &format!("redis://{address}"), "--mix", mix])
            .output()
            .unwrap();
        let message = common::assert_exit_2_one_line(&output);
        assert!(message.contains("redis"), "{mix}: {message}");
    }
}

#[test]
fn unreachable_target_and_bad_arguments_exit_2() {
    let (_guard, address) = common::unreachable_address();
    let output = Command::new(LOADGEN)
        .args(["--target", &format!("credshard://{address}"), "--duration", "1"])
        .output()
        .unwrap();
    common::assert_exit_2_one_line(&output);

    let output = Command::new(LOADGEN).args(["--mix", "get=abc"]).output().unwrap();
    common::assert_exit_2_one_line(&output);
}
