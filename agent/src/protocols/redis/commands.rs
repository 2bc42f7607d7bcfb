//! What loupe knows of Redis commands: which take a key first, which read (and what a miss looks
//! like in their reply), which have a subcommand, and how a command is written with its
//! arguments redacted. Names are compared upper-cased; unknown commands are still reported, with
//! no key and no miss.

use super::MAX_TEXT_ARGS;

/// Longest command name (and subcommand) read; longer is not a name.
pub const MAX_NAME: usize = 32;

/// How a read command's reply tells that what it asked for was missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Nil, or an empty array, map or set.
    Value,
    /// That, or an array whose members are all nil (MGET, HMGET).
    Members,
    /// That, or `:0` (EXISTS, HEXISTS, SISMEMBER).
    Count,
}

/// Commands whose reply changes what the conversation knows of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// SELECT: the database, when answered `+OK`.
    Select,
    /// RESET: back to database 0, out of subscriber mode.
    Reset,
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE: the connection receives messages. Answered by a
    /// confirmation that may be a push.
    Subscribe,
    /// UNSUBSCRIBE and its kin: answered by a confirmation that may be a push.
    Unsubscribe,
}

/// A command as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// The name upper-cased; `UNKNOWN` when it is not a plausible name.
    pub operation: String,
    /// The name, its subcommand for a container (`CLIENT SETNAME`), and `?` for each argument.
    pub text: String,
    /// Argument 1 is a key.
    pub key_first: bool,
    pub read: Option<Read>,
    pub effect: Effect,
}

/// A plausible command name: a letter, then letters, digits and `. _ - | :` (module commands
/// such as `JSON.GET`, `FT.SEARCH`).
pub fn plausible_name(name: &[u8]) -> bool {
    name.len() <= MAX_NAME
        && name.first().is_some_and(u8::is_ascii_alphabetic)
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._-|:".contains(&b))
}

/// A plausible subcommand: a letter, then letters, digits, `-` and `_`.
fn plausible_subcommand(word: &[u8]) -> bool {
    word.len() <= MAX_NAME
        && word.first().is_some_and(u8::is_ascii_alphabetic)
        && word
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Describes a command from its name, its first argument (when seen whole) and how many
/// arguments follow the name.
pub fn describe(name: Option<&[u8]>, first: Option<&[u8]>, args: u64) -> Described {
    let operation = match name {
        Some(name) if plausible_name(name) => String::from_utf8_lossy(name).to_ascii_uppercase(),
        _ => "UNKNOWN".to_owned(),
    };
    let op = operation.as_str();
    let subcommand = first
        .filter(|_| has_subcommand(op))
        .filter(|word| plausible_subcommand(word))
        .map(|word| String::from_utf8_lossy(word).to_ascii_uppercase());
    let mut text = operation.clone();
    let mut redacted = args;
    if let Some(subcommand) = &subcommand {
        text.push(' ');
        text.push_str(subcommand);
        redacted = redacted.saturating_sub(1);
    }
    for _ in 0..redacted.min(MAX_TEXT_ARGS) {
        text.push_str(" ?");
    }
    if redacted > MAX_TEXT_ARGS {
        text.push_str(" ...");
    }
    Described {
        key_first: args > 0 && key_first(op),
        read: read(op),
        effect: effect(op),
        operation,
        text,
    }
}

/// Commands whose first argument names what they do (`CLIENT SETNAME`, `CONFIG GET`).
fn has_subcommand(op: &str) -> bool {
    matches!(
        op,
        "ACL"
            | "CLIENT"
            | "CLUSTER"
            | "COMMAND"
            | "CONFIG"
            | "DEBUG"
            | "FUNCTION"
            | "LATENCY"
            | "MEMORY"
            | "MODULE"
            | "OBJECT"
            | "PUBSUB"
            | "SCRIPT"
            | "SLOWLOG"
            | "XGROUP"
            | "XINFO"
    )
}

/// Commands whose argument 1 is a key (the first of several for MGET, DEL, MSET...).
fn key_first(op: &str) -> bool {
    matches!(
        op,
        // Strings.
        "GET" | "SET" | "SETNX" | "SETEX" | "PSETEX" | "GETSET" | "GETEX" | "GETDEL"
            | "GETRANGE" | "SETRANGE" | "APPEND" | "STRLEN" | "INCR" | "INCRBY"
            | "INCRBYFLOAT" | "DECR" | "DECRBY" | "MGET" | "MSET" | "MSETNX" | "LCS"
            // Keys.
            | "DEL" | "UNLINK" | "EXISTS" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT"
            | "EXPIRETIME" | "PEXPIRETIME" | "PERSIST" | "TTL" | "PTTL" | "TYPE" | "TOUCH"
            | "DUMP" | "RESTORE" | "RENAME" | "RENAMENX" | "COPY" | "WATCH"
            // Hashes.
            | "HGET" | "HSET" | "HSETNX" | "HMSET" | "HMGET" | "HGETALL" | "HDEL" | "HEXISTS"
            | "HINCRBY" | "HINCRBYFLOAT" | "HKEYS" | "HVALS" | "HLEN" | "HSTRLEN" | "HSCAN"
            | "HRANDFIELD" | "HEXPIRE" | "HTTL" | "HGETDEL" | "HGETEX" | "HSETEX"
            // Lists.
            | "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" | "LPOP" | "RPOP" | "LLEN" | "LRANGE"
            | "LINDEX" | "LSET" | "LREM" | "LTRIM" | "LINSERT" | "LPOS" | "LMOVE" | "RPOPLPUSH"
            // Sets.
            | "SADD" | "SREM" | "SMEMBERS" | "SISMEMBER" | "SMISMEMBER" | "SCARD" | "SPOP"
            | "SRANDMEMBER" | "SSCAN" | "SMOVE" | "SINTER" | "SUNION" | "SDIFF"
            // Sorted sets.
            | "ZADD" | "ZREM" | "ZRANGE" | "ZRANGEBYSCORE" | "ZRANGEBYLEX" | "ZREVRANGE"
            | "ZREVRANGEBYSCORE" | "ZREVRANGEBYLEX" | "ZRANK" | "ZREVRANK" | "ZSCORE"
            | "ZMSCORE" | "ZCARD" | "ZCOUNT" | "ZLEXCOUNT" | "ZINCRBY" | "ZSCAN" | "ZPOPMIN"
            | "ZPOPMAX" | "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX"
            | "ZRANDMEMBER"
            // Streams, HyperLogLogs, bitmaps, geo.
            | "XADD" | "XRANGE" | "XREVRANGE" | "XLEN" | "XTRIM" | "XDEL" | "XACK" | "XCLAIM"
            | "XAUTOCLAIM" | "XPENDING" | "PFADD" | "PFCOUNT" | "PFMERGE" | "GETBIT" | "SETBIT"
            | "BITCOUNT" | "BITPOS" | "BITFIELD" | "GEOADD" | "GEOPOS" | "GEODIST" | "GEOHASH"
            | "GEOSEARCH" | "GEORADIUS" | "GEORADIUSBYMEMBER"
            // Common modules.
            | "JSON.GET" | "JSON.SET" | "JSON.DEL" | "JSON.MGET" | "JSON.TYPE" | "BF.ADD"
            | "BF.EXISTS"
    )
}

/// Read commands, and how their reply tells a miss.
fn read(op: &str) -> Option<Read> {
    match op {
        "GET" | "GETEX" | "GETDEL" | "HGET" | "HGETALL" | "HKEYS" | "HVALS" | "HRANDFIELD"
        | "LINDEX" | "LRANGE" | "LPOS" | "SMEMBERS" | "SRANDMEMBER" | "ZRANGE"
        | "ZRANGEBYSCORE" | "ZRANGEBYLEX" | "ZREVRANGE" | "ZREVRANGEBYSCORE" | "ZREVRANGEBYLEX"
        | "ZSCORE" | "ZRANK" | "ZREVRANK" | "ZRANDMEMBER" | "XRANGE" | "XREVRANGE" | "DUMP"
        | "JSON.GET" => Some(Read::Value),
        "MGET" | "HMGET" | "JSON.MGET" | "ZMSCORE" => Some(Read::Members),
        "EXISTS" | "HEXISTS" | "SISMEMBER" => Some(Read::Count),
        _ => None,
    }
}

fn effect(op: &str) -> Effect {
    match op {
        "SELECT" => Effect::Select,
        "RESET" => Effect::Reset,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => Effect::Subscribe,
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => Effect::Unsubscribe,
        _ => Effect::None,
    }
}

/// The first word of an error (`WRONGTYPE` of `-WRONGTYPE Operation against a key...`): an
/// upper-case code, never the message; `ERR` when the error does not start with one.
pub fn error_code(text: &[u8]) -> String {
    let word = text.split(|&b| b == b' ').next().unwrap_or_default();
    let code = !word.is_empty()
        && word.len() <= MAX_NAME
        && word
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if code {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".to_owned()
    }
}

/// The kind of a pub/sub message (the first element of a push, or of an array in RESP2's
/// subscriber mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSub {
    /// `message`, `pmessage`, `smessage`: a published message.
    Message,
    /// `subscribe` and kin: a confirmation of a (un)subscription, one per channel.
    Confirmation { unsubscribe: bool },
}

pub fn pubsub_kind(first: &[u8]) -> Option<PubSub> {
    match first.to_ascii_lowercase().as_slice() {
        b"message" | b"pmessage" | b"smessage" => Some(PubSub::Message),
        b"subscribe" | b"psubscribe" | b"ssubscribe" => {
            Some(PubSub::Confirmation { unsubscribe: false })
        }
        b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => {
            Some(PubSub::Confirmation { unsubscribe: true })
        }
        _ => None,
    }
}
