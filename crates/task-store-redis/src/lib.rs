//! `RedisStore`: the Redis backend (in progress).
