//! Store URLs: the scheme, the store's own parameters (`prefix`,
//! `retention`), the parameters passed on to `redis-rs`, and a printable
//! form without the password. A parameter that is neither is refused, by
//! name, so that a typo (`?prefx=…`) never silently falls back to a
//! default.

use std::time::Duration;

use task_store::{Result, ThreadStoreError};

/// The parameters `redis-rs` reads from a `redis://` or `rediss://` URL.
const REDIS_RS_PARAMS: &[&str] = &["protocol"];

/// The parameters `redis-rs` reads from a `redis+unix://` URL.
const REDIS_RS_UNIX_PARAMS: &[&str] = &["protocol", "db", "user", "pass"];

/// A store URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreUrl {
    /// The URL for `redis-rs`: the store's own parameters taken out.
    pub(crate) url: String,
    /// The URL without its password, for messages.
    pub(crate) target: String,
    /// `?prefix=P`.
    pub(crate) prefix: Option<String>,
    /// `?retention=D`.
    pub(crate) retention: Option<Duration>,
}

impl StoreUrl {
    /// Parses and checks a store URL.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL that does not parse, another scheme, an
    /// unknown parameter (named) or a bad value; `Unsupported` for
    /// `rediss://` in a build without TLS (naming the feature to enable).
    pub(crate) fn parse(raw: &str) -> Result<Self> {
        let mut url = url::Url::parse(raw).map_err(|err| {
            ThreadStoreError::invalid_input(format!("cannot parse the Redis URL: {err}"))
        })?;
        let target = printable(&url);
        let passed_on = match url.scheme() {
            "redis" => REDIS_RS_PARAMS,
            "redis+unix" | "unix" => REDIS_RS_UNIX_PARAMS,
            "rediss" if cfg!(feature = "tls") => REDIS_RS_PARAMS,
            "rediss" => {
                return Err(ThreadStoreError::Unsupported {
                    reason: format!(
                        "{target} asks for TLS, which this build cannot do: enable the feature \
                         `tls` of task-core (it enables task-store-redis/tls), or the feature \
                         `tls` of task-store-redis if you use it directly"
                    ),
                });
            }
            other => {
                return Err(ThreadStoreError::invalid_input(format!(
                    "the Redis URL {target} has the scheme {other:?}; \
                     expected redis://, rediss:// or redis+unix://"
                )));
            }
        };
        let mut prefix = None;
        let mut retention = None;
        let mut rest = Vec::new();
        let mut unknown = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "prefix" => prefix = Some(value.into_owned()),
                "retention" => retention = Some(parse_retention(&value, &target)?),
                known if passed_on.contains(&known) => {
                    rest.push((key.into_owned(), value.into_owned()));
                }
                _ => unknown.push(key.into_owned()),
            }
        }
        if !unknown.is_empty() {
            let mut known = vec!["prefix", "retention"];
            known.extend_from_slice(passed_on);
            return Err(ThreadStoreError::invalid_input(format!(
                "unknown parameter{} {} in the Redis URL {target}; the parameters are {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                known
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            )));
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        Ok(Self {
            url: url.to_string(),
            target,
            prefix,
            retention,
        })
    }
}

/// The URL without its password.
fn printable(url: &url::Url) -> String {
    let mut printable = url.clone();
    if printable.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = printable.set_password(Some("***"));
    }
    printable.to_string()
}

/// A retention: a positive whole number followed by a unit, `ms`, `s`,
/// `m`, `h` or `d`; a bare number is seconds (`7d`, `12h`, `3600`).
pub(crate) fn parse_retention(value: &str, target: &str) -> Result<Duration> {
    let bad = |why: &str| {
        ThreadStoreError::invalid_input(format!(
            "retention={value:?} in the Redis URL {target} {why}; write a positive whole \
             number with a unit, ms, s, m, h or d (such as 7d, 12h or 90s; a bare number \
             is seconds)"
        ))
    };
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad("has no number"))?;
    if number == 0 {
        return Err(bad(
            "is zero (leave the parameter out to keep finished threads)",
        ));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad("has an unknown unit")),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| bad("is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_parameters_are_taken_out_of_the_url() {
        let parsed = StoreUrl::parse(
            "redis://user:secret@127.0.0.1:6380/2?prefix=tenant-a&protocol=resp3&retention=7d",
        )
        .expect("valid URL");
        assert_eq!(parsed.prefix.as_deref(), Some("tenant-a"));
        assert_eq!(parsed.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            parsed.url,
            "redis://user:secret@127.0.0.1:6380/2?protocol=resp3"
        );
        assert!(!parsed.target.contains("secret"), "{}", parsed.target);

        let parsed = StoreUrl::parse("redis://127.0.0.1/?prefix=p").expect("valid URL");
        assert_eq!(parsed.prefix.as_deref(), Some("p"));
        assert_eq!(parsed.retention, None);
        assert_eq!(parsed.url, "redis://127.0.0.1/");
    }

    #[test]
    fn unknown_parameters_are_refused_by_name() {
        let err = StoreUrl::parse("redis://:pw@127.0.0.1/?prefx=typo&retenton=1d&protocol=3")
            .expect_err("typos");
        let message = err.to_string();
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{err:?}"
        );
        assert!(
            message.contains("unknown parameters `prefx`, `retenton`"),
            "{message}"
        );
        assert!(
            message.contains("`prefix`"),
            "names what it takes: {message}"
        );
        assert!(!message.contains("pw"), "no password in {message}");

        // redis-rs reads db, user and pass only from unix socket URLs.
        assert!(StoreUrl::parse("redis://127.0.0.1/?db=2").is_err());
        assert!(StoreUrl::parse("redis+unix:///tmp/redis.sock?db=2&pass=x").is_ok());
    }

    #[test]
    fn retentions_take_a_unit_and_bare_numbers_are_seconds() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("90", Duration::from_secs(90)),
            ("90s", Duration::from_secs(90)),
            ("15m", Duration::from_secs(900)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse_retention(text, "t").expect(text), expected);
        }
        for bad in [
            "",
            "0",
            "0d",
            "d",
            "-1d",
            "1w",
            "1.5h",
            "7 d",
            "99999999999999999999d",
        ] {
            let err = parse_retention(bad, "t").expect_err(bad);
            assert!(
                matches!(err, ThreadStoreError::InvalidInput { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn other_schemes_are_refused() {
        let err = StoreUrl::parse("http://127.0.0.1").expect_err("not redis");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{err:?}"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_names_the_feature_to_enable() {
        let err = StoreUrl::parse("rediss://:pw@example.invalid:6380").expect_err("no TLS");
        let message = err.to_string();
        assert!(
            message.contains("feature `tls` of task-core"),
            "names task-core's feature: {message}"
        );
        assert!(
            message.contains("task-store-redis/tls"),
            "and the crate's: {message}"
        );
        assert!(!message.contains("pw@"), "no password in {message}");
    }
}
