//! Running statements on a pooled connection: bounded in time, and re-run
//! when the server rolled them back for a race.

/// How often a statement the server rolled back for a serialization
/// failure or a deadlock is run again before the error is returned. Such a
/// rollback means nothing was written, so running it again is always safe.
pub(crate) const MAX_RACE_RETRIES: u32 = 3;

/// Runs `$body` with `$client` bound to a connection from `$pool`, within
/// `$timeout` (past it the connection is closed, not returned to the pool,
/// since it may still be busy with the abandoned statement, and the result
/// is `Fault::Elapsed`). `$body` is an expression of type
/// `Result<T, Fault>` that may use `?` on driver errors; it is evaluated
/// again (on a fresh connection) when the server rolled it back for a
/// serialization failure or a deadlock, at most [`MAX_RACE_RETRIES`] times.
macro_rules! on_connection {
    ($pool:expr, $timeout:expr, |$client:ident| $body:expr) => {{
        let mut races = 0u32;
        loop {
            let outcome: ::std::result::Result<_, $crate::error::Fault> = async {
                let $client = $pool.get().await?;
                let timeout = $timeout;
                let run = async {
                    let result: ::std::result::Result<_, $crate::error::Fault> =
                        async { $body }.await;
                    result
                };
                match ::tokio::time::timeout(timeout, run).await {
                    Ok(result) => result,
                    Err(_) => {
                        drop(::deadpool_postgres::Object::take($client));
                        Err($crate::error::Fault::Elapsed(timeout))
                    }
                }
            }
            .await;
            match outcome {
                Err(fault)
                    if fault.is_rolled_back_race() && races < $crate::conn::MAX_RACE_RETRIES =>
                {
                    races += 1;
                }
                other => break other,
            }
        }
    }};
}

pub(crate) use on_connection;
