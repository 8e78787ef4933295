//! Store URLs: the scheme (one server, or the seed nodes of a Redis
//! Cluster), the store's own parameters (`prefix`, `retention`, `shards`,
//! `wait`, `wait_timeout`), the parameters passed on to `redis-rs`, and a
//! printable form without the password. A parameter that is neither is refused, by
//! name, so that a typo (`?prefx=…`) never silently falls back to a
//! default.

use std::time::Duration;

use task_store::{Result, ThreadStoreError};

use crate::keys::MAX_SHARDS;

/// The parameters `redis-rs` reads from a `redis://` or `rediss://` URL.
const REDIS_RS_PARAMS: &[&str] = &["protocol"];

/// The parameters `redis-rs` reads from a `redis+unix://` URL.
const REDIS_RS_UNIX_PARAMS: &[&str] = &["protocol", "db", "user", "pass"];

/// The store's own parameters.
const STORE_PARAMS: &[&str] = &["prefix", "retention", "shards", "wait", "wait_timeout"];

/// A store URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreUrl {
    /// The URL for `redis-rs`: the store's own parameters taken out. For a
    /// cluster, the first seed node's.
    pub(crate) url: String,
    /// For `redis+cluster://`: one `redis://` URL per seed node (with the
    /// credentials), for `redis-rs`'s cluster client.
    pub(crate) cluster: Option<Vec<String>>,
    /// `?shards=N`.
    pub(crate) shards: Option<usize>,
    /// `?wait=N`: replicas that must acknowledge each write.
    pub(crate) wait: Option<usize>,
    /// `?wait_timeout=D`.
    pub(crate) wait_timeout: Option<Duration>,
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
        if let Some((scheme, rest)) = raw.split_once("://")
            && let Some(node_scheme) = scheme.strip_suffix("+cluster")
        {
            return Self::parse_cluster(raw, node_scheme, rest);
        }
        let mut url = url::Url::parse(raw).map_err(|err| {
            ThreadStoreError::invalid_input(format!("cannot parse the Redis URL: {err}"))
        })?;
        let target = printable(&url);
        let passed_on = match url.scheme() {
            "redis" => REDIS_RS_PARAMS,
            "redis+unix" | "unix" => REDIS_RS_UNIX_PARAMS,
            "rediss" if cfg!(feature = "tls") => REDIS_RS_PARAMS,
            "rediss" => {
                return Err(tls_unsupported(&target));
            }
            other => {
                return Err(ThreadStoreError::invalid_input(format!(
                    "the Redis URL {target} has the scheme {other:?}; \
                     expected redis://, rediss://, redis+unix:// or redis+cluster://"
                )));
            }
        };
        let mut params = Params::default();
        let rest = params.take(url.query_pairs(), passed_on, &target)?;
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        Ok(params.into_url(url.to_string(), None, target))
    }

    /// `redis+cluster://[user][:password@]host:port[,host:port…][/][?params]`
    /// (`rediss+cluster://` for TLS): the seed nodes, each becoming a
    /// `redis://` (or `rediss://`) URL with the same credentials.
    fn parse_cluster(raw: &str, node_scheme: &str, rest: &str) -> Result<Self> {
        let (authority, query) = match rest.find(['/', '?']) {
            Some(at) => {
                let (authority, tail) = rest.split_at(at);
                let tail = tail.strip_prefix('/').unwrap_or(tail);
                match tail.strip_prefix('?') {
                    Some(query) => (authority, query),
                    None if tail.is_empty() => (authority, ""),
                    None => {
                        return Err(ThreadStoreError::invalid_input(format!(
                            "the Redis Cluster URL {} has a path {tail:?}; a cluster has no \
                             database number: write redis+cluster://host:port,host:port/?params",
                            printable_cluster(raw)
                        )));
                    }
                }
            }
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let target = printable_cluster(raw);
        match node_scheme {
            "redis" => {}
            "rediss" if cfg!(feature = "tls") => {}
            "rediss" => {
                return Err(tls_unsupported(&target));
            }
            other => {
                return Err(ThreadStoreError::invalid_input(format!(
                    "the Redis URL {target} has the scheme {other:?}+cluster; \
                     expected redis+cluster:// or rediss+cluster://"
                )));
            }
        }
        let mut seeds = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(ThreadStoreError::invalid_input(format!(
                    "the Redis Cluster URL {target} names an empty seed node; write \
                     redis+cluster://host:port,host:port/ with at least one host:port"
                )));
            }
            let seed = match userinfo {
                Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}/"),
                None => format!("{node_scheme}://{host}/"),
            };
            let parsed = url::Url::parse(&seed).map_err(|err| {
                ThreadStoreError::invalid_input(format!(
                    "cannot parse the seed node {host:?} of the Redis Cluster URL {target}: {err}"
                ))
            })?;
            if parsed.port().is_none() {
                return Err(ThreadStoreError::invalid_input(format!(
                    "the seed node {host:?} of the Redis Cluster URL {target} has no port; \
                     write host:port (cluster nodes listen on ports of their own)"
                )));
            }
            seeds.push(seed);
        }
        let mut params = Params::default();
        params.take(url::form_urlencoded::parse(query.as_bytes()), &[], &target)?;
        let first = seeds[0].clone();
        Ok(params.into_url(first, Some(seeds), target))
    }
}

/// The store's own parameters of a URL.
#[derive(Default)]
struct Params {
    prefix: Option<String>,
    retention: Option<Duration>,
    shards: Option<usize>,
    wait: Option<usize>,
    wait_timeout: Option<Duration>,
}

impl Params {
    /// Takes the store's parameters out of `pairs`; returns the ones
    /// `redis-rs` reads (those in `passed_on`), and refuses any other by
    /// name.
    fn take<'a>(
        &mut self,
        pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
        passed_on: &[&str],
        target: &str,
    ) -> Result<Vec<(String, String)>> {
        let mut rest = Vec::new();
        let mut unknown = Vec::new();
        for (key, value) in pairs {
            match key.as_ref() {
                "prefix" => self.prefix = Some(value.into_owned()),
                "retention" => {
                    self.retention = Some(parse_duration("retention", &value, target)?);
                }
                "shards" => {
                    self.shards = Some(parse_count("shards", &value, 1, MAX_SHARDS, target)?)
                }
                "wait" => self.wait = Some(parse_count("wait", &value, 0, 64, target)?),
                "wait_timeout" => {
                    self.wait_timeout = Some(parse_duration("wait_timeout", &value, target)?);
                }
                known if passed_on.contains(&known) => {
                    rest.push((key.into_owned(), value.into_owned()));
                }
                _ => unknown.push(key.into_owned()),
            }
        }
        if !unknown.is_empty() {
            let mut known = STORE_PARAMS.to_vec();
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
        Ok(rest)
    }

    fn into_url(self, url: String, cluster: Option<Vec<String>>, target: String) -> StoreUrl {
        StoreUrl {
            url,
            cluster,
            target,
            prefix: self.prefix,
            retention: self.retention,
            shards: self.shards,
            wait: self.wait,
            wait_timeout: self.wait_timeout,
        }
    }
}

/// The error for a TLS URL in a build without the `tls` feature.
fn tls_unsupported(target: &str) -> ThreadStoreError {
    ThreadStoreError::Unsupported {
        reason: format!(
            "{target} asks for TLS, which this build cannot do: enable the feature `tls` of \
             task-core (it enables task-store-redis/tls), or the feature `tls` of \
             task-store-redis if you use it directly"
        ),
    }
}

/// A whole number between `min` and `max`.
fn parse_count(name: &str, value: &str, min: usize, max: usize, target: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ThreadStoreError::invalid_input(format!(
                "{name}={value:?} in the Redis URL {target} is not a whole number from {min} to {max}"
            ))
        })
}

/// A cluster URL without its password, for messages.
fn printable_cluster(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{hosts}{tail}")
        }
        None => raw.to_owned(),
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

/// A duration (`retention`, `wait_timeout`): a positive whole number
/// followed by a unit, `ms`, `s`, `m`, `h` or `d`; a bare number is seconds
/// (`7d`, `12h`, `3600`).
pub(crate) fn parse_duration(name: &str, value: &str, target: &str) -> Result<Duration> {
    let bad = |why: &str| {
        ThreadStoreError::invalid_input(format!(
            "{name}={value:?} in the Redis URL {target} {why}; write a positive whole \
             number with a unit, ms, s, m, h or d (such as 7d, 12h or 90s; a bare number \
             is seconds)"
        ))
    };
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad("has no number"))?;
    if number == 0 {
        return Err(bad("is zero (leave the parameter out for the default)"));
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
            assert_eq!(
                parse_duration("retention", text, "t").expect(text),
                expected
            );
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
            let err = parse_duration("retention", bad, "t").expect_err(bad);
            assert!(
                matches!(err, ThreadStoreError::InvalidInput { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes_with_the_credentials() {
        let parsed = StoreUrl::parse(
            "redis+cluster://tasks:s3cret@10.0.0.1:7000,10.0.0.2:7001/?prefix=app&shards=32&wait=1&wait_timeout=500ms",
        )
        .expect("valid cluster URL");
        assert_eq!(
            parsed.cluster,
            Some(vec![
                "redis://tasks:s3cret@10.0.0.1:7000/".to_owned(),
                "redis://tasks:s3cret@10.0.0.2:7001/".to_owned(),
            ])
        );
        assert_eq!(parsed.prefix.as_deref(), Some("app"));
        assert_eq!(parsed.shards, Some(32));
        assert_eq!(parsed.wait, Some(1));
        assert_eq!(parsed.wait_timeout, Some(Duration::from_millis(500)));
        assert!(!parsed.target.contains("s3cret"), "{}", parsed.target);
        assert!(
            parsed
                .target
                .contains("tasks:***@10.0.0.1:7000,10.0.0.2:7001"),
            "{}",
            parsed.target
        );

        let bare = StoreUrl::parse("redis+cluster://127.0.0.1:7000").expect("one seed, no slash");
        assert_eq!(
            bare.cluster,
            Some(vec!["redis://127.0.0.1:7000/".to_owned()])
        );
        assert_eq!(bare.shards, None);
    }

    #[test]
    fn malformed_cluster_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis+cluster://:pw@h1:7000,,h2:7001/", "empty seed node"),
            ("redis+cluster://:pw@h1:7000,h2/", "has no port"),
            ("redis+cluster://h1:7000/2", "no database number"),
            ("redis+cluster://h1:port/", "cannot parse the seed node"),
            ("redis+cluster://h1:7000/?shards=0", "from 1 to 1024"),
            ("redis+cluster://h1:7000/?shards=many", "from 1 to 1024"),
            ("redis+cluster://h1:7000/?wait=-1", "from 0 to 64"),
            (
                "redis+cluster://h1:7000/?protocol=resp3",
                "unknown parameter `protocol`",
            ),
            ("http+cluster://h1:7000/", "expected redis+cluster://"),
        ] {
            let err = StoreUrl::parse(url).expect_err(url);
            let message = err.to_string();
            assert!(
                matches!(err, ThreadStoreError::InvalidInput { .. }),
                "{url}: {err:?}"
            );
            assert!(message.contains(says), "{url}: {message}");
            assert!(!message.contains("pw@"), "no password in {message}");
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
