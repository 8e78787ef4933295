//! Store URLs: the scheme, the store's own parameters, and a printable form
//! without the password.

use task_store::{Result, ThreadStoreError};

/// Splits a store URL into the URL for `redis-rs` (without `prefix`), a
/// printable form without the password, and the prefix it names.
pub(crate) fn split_url(raw: &str) -> Result<(String, String, Option<String>)> {
    let mut url = url::Url::parse(raw).map_err(|err| {
        ThreadStoreError::invalid_input(format!("cannot parse the Redis URL: {err}"))
    })?;
    let mut printable = url.clone();
    if printable.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = printable.set_password(Some("***"));
    }
    let target = printable.to_string();
    match url.scheme() {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" if cfg!(feature = "tls") => {}
        "rediss" => {
            return Err(ThreadStoreError::Unsupported {
                reason: format!(
                    "feature `tls` of task-store-redis is not enabled for {target}; \
                     enable it to connect with rediss://"
                ),
            });
        }
        other => {
            return Err(ThreadStoreError::invalid_input(format!(
                "the Redis URL {target} has the scheme {other:?}; \
                 expected redis://, rediss:// or redis+unix://"
            )));
        }
    }
    let mut prefix = None;
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "prefix" {
            prefix = Some(value.into_owned());
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((url.to_string(), target, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_parameter_is_taken_out_of_the_url() {
        let (url, target, prefix) =
            split_url("redis://user:secret@127.0.0.1:6380/2?prefix=tenant-a&protocol=resp3")
                .expect("valid URL");
        assert_eq!(prefix.as_deref(), Some("tenant-a"));
        assert_eq!(url, "redis://user:secret@127.0.0.1:6380/2?protocol=resp3");
        assert!(!target.contains("secret"), "{target}");

        let (url, _, prefix) = split_url("redis://127.0.0.1/?prefix=p").expect("valid URL");
        assert_eq!(prefix.as_deref(), Some("p"));
        assert_eq!(url, "redis://127.0.0.1/");
    }

    #[test]
    fn other_schemes_are_refused() {
        let err = split_url("http://127.0.0.1").expect_err("not redis");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{err:?}"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_fails_loudly() {
        let err = split_url("rediss://:pw@example.invalid:6380").expect_err("no TLS");
        assert!(
            err.to_string().contains("feature `tls`"),
            "the error names the feature: {err}"
        );
        assert!(!err.to_string().contains("pw@"), "no password in {err}");
    }
}
