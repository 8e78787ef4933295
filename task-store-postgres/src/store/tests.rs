//! Unit tests of the store: URL handling, TLS refusal and the plans of
//! its listings.

use super::*;

#[test]
fn the_schema_parameter_is_taken_out_of_the_url_and_the_password_hidden() {
    let (url, shown, schema) =
        split_url("postgres://app:s3cret@db.example:5433/tasks?schema=my_app&sslmode=disable")
            .expect("valid");
    assert_eq!(
        url,
        "postgres://app:s3cret@db.example:5433/tasks?sslmode=disable"
    );
    assert_eq!(shown, "postgres://app@db.example:5433/tasks");
    assert_eq!(schema.as_deref(), Some("my_app"));

    let (url, shown, schema) = split_url("postgresql://localhost/db").expect("valid");
    assert_eq!(url, "postgresql://localhost/db");
    assert_eq!(shown, "postgresql://localhost/db");
    assert_eq!(schema, None);
}

/// TLS is refused before any connection is tried (the port is closed),
/// with an error that says what to do and hides the password.
#[tokio::test]
async fn sslmode_require_is_refused_with_a_clear_error() {
    let err = PostgresStore::connect("postgres://app:s3cret@127.0.0.1:1/db?sslmode=require")
        .await
        .expect_err("no TLS in this build");
    assert!(
        matches!(err, ThreadStoreError::Unsupported { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("sslmode=require"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn other_schemes_are_refused_without_showing_the_password() {
    let err = split_url("mysql://u:pw@host/db").expect_err("not postgres");
    assert!(
        matches!(err, ThreadStoreError::InvalidInput { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("pw"), "{err}");
    assert!(split_url("localhost:5432").is_err());
}

/// Every listing reads an index (one of the partial indexes of open
/// threads for `open_only`) and never scans the table: checked on
/// the plans PostgreSQL makes for the store's own statements, over a
/// table of mostly finished threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_reads_an_index() {
    let Some(url) = task_testkit::postgres_server::shared_postgres_url("listing plans") else {
        return;
    };
    let schema = task_testkit::postgres_server::unique_schema("plans");
    let options = PostgresStoreOptions::default().with_schema(schema.clone());
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect");
    let threads: Vec<Thread> = (0..3000)
        .map(|i| {
            let mut thread = Thread::new(format!("t{i:05}"), format!("k{}", i % 2))
                .with_parent(format!("p{}", i % 30));
            thread.terminal = i % 500 != 0;
            thread
        })
        .collect();
    for result in store.create_batch(threads).await {
        result.expect("create");
    }
    let client = store.inner.pool.get().await.expect("a connection");
    client
        .batch_execute(&format!("ANALYZE \"{schema}\".threads"))
        .await
        .expect("analyze");
    for bits in 0..8 {
        let (parent, kind, open) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
        let sql = store.inner.sql.list(parent, kind, open);
        let mut args = vec!["''".to_owned()];
        if parent {
            args.push("'p7'".to_owned());
        }
        if kind {
            args.push("'k1'".to_owned());
        }
        args.push("101".to_owned());
        client
            .batch_execute(&format!("DEALLOCATE ALL; PREPARE listing AS {sql}"))
            .await
            .expect("prepare");
        let plan: String = client
            .simple_query(&format!("EXPLAIN EXECUTE listing({})", args.join(", ")))
            .await
            .expect("explain")
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!plan.contains("Seq Scan"), "{sql}:\n{plan}");
        let index = if open { "threads_open" } else { "threads_" };
        assert!(
            plan.contains(&format!("using {index}"))
                || plan.contains(&format!("Index Scan on {index}")),
            "{sql}:\n{plan}"
        );
    }
}
