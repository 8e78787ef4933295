//! `rediss://` against a private server with a self-signed certificate.
//! Runs with `--features tls-insecure` (the certificate is not in the
//! system's roots, so the URL says `#insecure`); without the feature it checks
//! that `rediss://` is refused with an error naming the feature.

mod support;

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_refused_with_a_clear_error() {
    use task_store::ThreadStoreError;
    use task_store_redis::RedisStore;

    let err = RedisStore::connect("rediss://:secret@127.0.0.1:1/")
        .await
        .expect_err("no TLS in this build");
    assert!(
        matches!(err, ThreadStoreError::Unsupported { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("feature `tls`"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[cfg(feature = "tls-insecure")]
#[tokio::test]
async fn the_store_works_over_tls() {
    use std::process::Command;

    use serde_json::json;
    use task_store::{ChangeSet, Thread, ThreadReader, ThreadWriter, VersionPrecondition};
    use task_store_redis::RedisStore;
    use task_testkit::redis_server::{RedisServer, TlsFiles, private_server_or_skip};

    let test = "the_store_works_over_tls";
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!(
            "\n!!!!! SKIPPED {test}: no openssl binary to make a test certificate with !!!!!\n"
        );
        return;
    }
    let certs = tempfile::tempdir().expect("a directory for certificates");
    let path = |name: &str| certs.path().join(name);
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(certs.path())
            .output()
            .expect("openssl runs (install openssl for the TLS test)");
        assert!(status.status.success(), "openssl {args:?}: {status:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.pem",
    ]);
    let files = TlsFiles {
        cert: path("server.pem"),
        key: path("server.key"),
        ca: path("ca.pem"),
    };
    let builder = RedisServer::builder().requirepass("pw").tls(files);
    let Some(server) = private_server_or_skip(test, builder) else {
        return;
    };
    let url = format!(
        "{}?prefix=tls#insecure",
        server.tls_url().expect("a TLS port")
    );
    let store = RedisStore::connect_with(&url, support::fast_options())
        .await
        .expect("connect over TLS");
    store
        .create(Thread::new("t", "task"))
        .await
        .expect("create");
    store
        .append(
            "t",
            ChangeSet::state(json!(1)),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("append");
    assert_eq!(
        store.load("t").await.expect("load").map(|h| h.version),
        Some(2)
    );
}
