//! The Redis conversation on byte streams built as clients and servers send them.

use super::*;
use crate::protocols::{Chunk, Flow, chunk};

/// A command array.
fn cmd(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(&bulk(word.as_bytes()));
    }
    out
}

fn bulk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

fn done(events: &[RedisEvent]) -> Vec<&CommandDone> {
    events
        .iter()
        .filter_map(|e| match e {
            RedisEvent::Done(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Sends `request`, answers `reply`, and returns what the exchange finished.
fn exchange(c: &mut RedisConversation, at: u64, request: &[u8], reply: &[u8]) -> Vec<CommandDone> {
    let mut events = Vec::new();
    c.push(chunk(Flow::Request, at, request), &mut events);
    c.push(chunk(Flow::Response, at + 10, reply), &mut events);
    done(&events).into_iter().cloned().collect()
}

/// The one command an exchange finished.
fn one(c: &mut RedisConversation, request: &[u8], reply: &[u8]) -> CommandDone {
    let mut all = exchange(c, 100, request, reply);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn get_hit_and_miss() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(
        chunk(Flow::Request, 10, &cmd(&["GET", "user:42"])),
        &mut events,
    );
    assert_eq!(events, vec![RedisEvent::Started { seq: 0 }]);
    c.push(chunk(Flow::Response, 20, b"$5\r\nhello\r\n"), &mut events);
    let hit = done(&events)[0].clone();
    assert_eq!(hit.seq, 0);
    assert_eq!(hit.operation, "GET");
    assert_eq!(hit.text, "GET ?");
    assert_eq!(hit.miss, Some(false));
    assert_eq!(hit.error, None);
    assert_eq!(hit.database, Some(0), "seen from its start: database 0");
    assert_eq!(hit.reply_bytes, 11);
    assert_eq!((hit.start.enter_ns, hit.end.exit_ns), (10, 21));
    assert!(hit.key_hash.is_some() && hit.values_hash.is_some());

    let miss = one(&mut c, &cmd(&["GET", "user:43"]), b"$-1\r\n");
    assert_eq!(miss.miss, Some(true));
    assert_eq!(miss.seq, 1);
    assert_ne!(miss.key_hash, hit.key_hash);
    // RESP3's null.
    let null = one(&mut c, &cmd(&["get", "user:44"]), b"_\r\n");
    assert_eq!(null.miss, Some(true));
    assert_eq!(null.operation, "GET", "upper-cased");
    // An empty string is a value.
    let empty = one(&mut c, &cmd(&["GET", "user:45"]), b"$0\r\n\r\n");
    assert_eq!(empty.miss, Some(false));
}

#[test]
fn set_hashes_its_key_as_get_does_and_its_values_for_repeats() {
    let mut c = RedisConversation::new();
    let set = one(&mut c, &cmd(&["SET", "cart:7", "{\"n\":1}"]), b"+OK\r\n");
    assert_eq!(set.operation, "SET");
    assert_eq!(set.text, "SET ? ?");
    assert_eq!(set.miss, None, "a write has no miss");
    assert_eq!(set.reply_bytes, 5);
    let get = one(&mut c, &cmd(&["GET", "cart:7"]), b"$7\r\n{\"n\":1}\r\n");
    assert_eq!(get.key_hash, set.key_hash, "the same key");
    let again = one(&mut c, &cmd(&["SET", "cart:7", "{\"n\":1}"]), b"+OK\r\n");
    assert_eq!(again.values_hash, set.values_hash, "the same call");
    let other = one(&mut c, &cmd(&["SET", "cart:7", "{\"n\":2}"]), b"+OK\r\n");
    assert_ne!(other.values_hash, set.values_hash, "another value");
    assert_eq!(other.key_hash, set.key_hash);
    // Where arguments split matters: `a bc` is not `ab c`.
    let ab = one(&mut c, &cmd(&["SET", "ab", "c"]), b"+OK\r\n");
    let a = one(&mut c, &cmd(&["SET", "a", "bc"]), b"+OK\r\n");
    assert_ne!(ab.values_hash, a.values_hash);
    // A key longer than what is kept of a name is still hashed.
    let long = "session:0123456789abcdef0123456789abcdef0123456789abcdef";
    let set = one(&mut c, &cmd(&["SETEX", long, "60", "x"]), b"+OK\r\n");
    let ttl = one(&mut c, &cmd(&["TTL", long]), b":59\r\n");
    assert!(set.key_hash.is_some());
    assert_eq!(set.key_hash, ttl.key_hash);
    assert_eq!(set.text, "SETEX ? ? ?");
    // Commands whose first argument is not a key have none.
    let ping = one(&mut c, &cmd(&["PING", "hello"]), b"$5\r\nhello\r\n");
    assert_eq!(ping.key_hash, None);
    assert_eq!(ping.miss, None);
}

#[test]
fn a_pipeline_of_three_pairs_in_order_split_at_every_byte() {
    let request = [
        cmd(&["SET", "a", "1"]),
        cmd(&["GET", "a"]),
        cmd(&["GET", "missing"]),
    ]
    .concat();
    let reply = b"+OK\r\n$1\r\n1\r\n$-1\r\n";
    for i in 0..=request.len() {
        for j in 0..=reply.len() {
            let mut c = RedisConversation::new();
            let mut events = Vec::new();
            c.push(chunk(Flow::Request, 10, &request[..i]), &mut events);
            c.push(chunk(Flow::Request, 20, &request[i..]), &mut events);
            c.push(chunk(Flow::Response, 30, &reply[..j]), &mut events);
            c.push(chunk(Flow::Response, 40, &reply[j..]), &mut events);
            let all = done(&events);
            let summary: Vec<_> = all
                .iter()
                .map(|d| (d.seq, d.operation.as_str(), d.miss, d.reply_bytes))
                .collect();
            assert_eq!(
                summary,
                vec![
                    (0, "SET", None, 5),
                    (1, "GET", Some(false), 7),
                    (2, "GET", Some(true), 5)
                ],
                "split at {i} and {j}"
            );
            // The third reply ends in the second read unless the first held it all.
            let last_end = if j == reply.len() { 31 } else { 41 };
            assert_eq!(all[2].end.exit_ns, last_end, "split at {i} and {j}");
            // The SET started in the first write unless it was empty.
            let first_start = if i == 0 { 20 } else { 10 };
            assert_eq!(all[0].start.enter_ns, first_start);
            assert_eq!(c.stats(), RedisStats::default(), "split at {i} and {j}");
        }
    }
}

#[test]
fn mget_misses_only_when_every_member_is_nil() {
    let mut c = RedisConversation::new();
    let partial = one(
        &mut c,
        &cmd(&["MGET", "a", "b", "c"]),
        b"*3\r\n$1\r\nx\r\n$-1\r\n$-1\r\n",
    );
    assert_eq!(partial.text, "MGET ? ? ?");
    assert_eq!(partial.miss, Some(false));
    let none = one(
        &mut c,
        &cmd(&["MGET", "a", "b", "c"]),
        b"*3\r\n$-1\r\n$-1\r\n_\r\n",
    );
    assert_eq!(none.miss, Some(true));
    assert_eq!(none.key_hash, partial.key_hash, "the first key");
    let hmget = one(
        &mut c,
        &cmd(&["HMGET", "h", "f1", "f2"]),
        b"*2\r\n$-1\r\n$-1\r\n",
    );
    assert_eq!(hmget.miss, Some(true));
}

#[test]
fn hgetall_of_nothing_is_an_empty_map_in_resp3_and_an_empty_array_in_resp2() {
    let mut c = RedisConversation::new();
    let resp3 = one(&mut c, &cmd(&["HGETALL", "h"]), b"%0\r\n");
    assert_eq!(resp3.miss, Some(true));
    let resp2 = one(&mut c, &cmd(&["HGETALL", "h"]), b"*0\r\n");
    assert_eq!(resp2.miss, Some(true));
    let full = one(
        &mut c,
        &cmd(&["HGETALL", "h"]),
        b"%1\r\n+field\r\n$5\r\nvalue\r\n",
    );
    assert_eq!(full.miss, Some(false));
    let members = one(&mut c, &cmd(&["SMEMBERS", "s"]), b"~0\r\n");
    assert_eq!(members.miss, Some(true));
    let exists = one(&mut c, &cmd(&["EXISTS", "k"]), b":0\r\n");
    assert_eq!(exists.miss, Some(true));
    let exists = one(&mut c, &cmd(&["EXISTS", "k"]), b":1\r\n");
    assert_eq!(exists.miss, Some(false));
}

#[test]
fn an_error_reply_gives_its_code_not_its_message() {
    let mut c = RedisConversation::new();
    let wrong = one(
        &mut c,
        &cmd(&["GET", "h"]),
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    assert_eq!(wrong.error.as_deref(), Some("WRONGTYPE"));
    assert_eq!(wrong.miss, None, "an error says nothing of a miss");
    let noauth = one(
        &mut c,
        &cmd(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    assert_eq!(noauth.error.as_deref(), Some("NOAUTH"));
    let blob = one(
        &mut c,
        &cmd(&["SET", "k"]),
        b"!21\r\nSYNTAX invalid syntax\r\n",
    );
    assert_eq!(blob.error.as_deref(), Some("SYNTAX"));
    let lower = one(&mut c, &cmd(&["AUTH", "pw"]), b"-invalid password\r\n");
    assert_eq!(lower.error.as_deref(), Some("ERR"), "no message word");
}

#[test]
fn select_sets_the_database_of_what_follows() {
    let mut c = RedisConversation::new();
    let before = one(&mut c, &cmd(&["GET", "k"]), b"$-1\r\n");
    assert_eq!(before.database, Some(0));
    let select = one(&mut c, &cmd(&["SELECT", "2"]), b"+OK\r\n");
    assert_eq!(select.database, Some(2));
    assert_eq!(select.text, "SELECT ?");
    let get = one(&mut c, &cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(get.database, Some(2));
    let refused = one(
        &mut c,
        &cmd(&["SELECT", "99"]),
        b"-ERR DB index is out of range\r\n",
    );
    assert_eq!(refused.database, Some(2), "a failed SELECT changes nothing");
    let inline = one(&mut c, b"SELECT 5\r\n", b"+OK\r\n");
    assert_eq!(inline.database, Some(5));
    let reset = one(&mut c, &cmd(&["RESET"]), b"+RESET\r\n");
    assert_eq!(reset.database, Some(0), "RESET goes back to database 0");
}

#[test]
fn multi_exec_reports_each_command() {
    let mut c = RedisConversation::new();
    let request = [
        cmd(&["MULTI"]),
        cmd(&["SET", "a", "1"]),
        cmd(&["GET", "a"]),
        cmd(&["EXEC"]),
    ]
    .concat();
    let reply = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$1\r\n1\r\n";
    let all = exchange(&mut c, 10, &request, reply);
    let summary: Vec<_> = all
        .iter()
        .map(|d| (d.operation.as_str(), d.text.as_str(), d.miss, d.reply_bytes))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("MULTI", "MULTI", None, 5),
            ("SET", "SET ? ?", None, 9),
            ("GET", "GET ?", None, 9),
            ("EXEC", "EXEC", None, 16),
        ]
    );
}

#[test]
fn a_value_larger_than_the_capture_is_skipped_by_count() {
    let mut c = RedisConversation::new();
    let value = vec![b'v'; 10 * 1024];
    let set = [bulk(b"SET"), bulk(b"big"), bulk(&value)].concat();
    let set = [b"*3\r\n".to_vec(), set].concat();
    let mut events = Vec::new();
    c.push(
        Chunk {
            flow: Flow::Request,
            enter_ns: 10,
            exit_ns: 11,
            captured: &set[..1024],
            total_len: set.len(),
            tail: &[],
        },
        &mut events,
    );
    c.push(chunk(Flow::Response, 20, b"+OK\r\n"), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].text, "SET ? ?");
    assert!(all[0].key_hash.is_some(), "the key was captured");
    assert_eq!(all[0].values_hash, None, "the value was not");

    // And the other way: a large reply.
    let mut events = Vec::new();
    c.push(chunk(Flow::Request, 30, &cmd(&["GET", "big"])), &mut events);
    let reply = bulk(&value);
    c.push(
        Chunk {
            flow: Flow::Response,
            enter_ns: 40,
            exit_ns: 41,
            captured: &reply[..1024],
            total_len: reply.len(),
            tail: &[],
        },
        &mut events,
    );
    let get = done(&events)[0].clone();
    assert_eq!(get.miss, Some(false));
    assert_eq!(get.reply_bytes, reply.len() as u64);
    assert_eq!(get.end.exit_ns, 41);
    // What follows is still framed.
    let ping = one(&mut c, &cmd(&["PING"]), b"+PONG\r\n");
    assert_eq!(ping.operation, "PING");
    assert_eq!(ping.text, "PING");
    assert_eq!(c.stats().lost_framing, 0);
}

#[test]
fn a_large_value_split_over_reads_with_small_captures_stays_framed() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(chunk(Flow::Request, 10, &cmd(&["GET", "big"])), &mut events);
    let reply = bulk(&vec![b'x'; 5000]);
    // Three reads, 64 bytes of each captured.
    for (i, part) in reply.chunks(2000).enumerate() {
        c.push(
            Chunk {
                flow: Flow::Response,
                enter_ns: 20 + i as u64,
                exit_ns: 20 + i as u64,
                captured: &part[..part.len().min(64)],
                total_len: part.len(),
                tail: &[],
            },
            &mut events,
        );
    }
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].end.exit_ns, 22);
    assert_eq!(all[0].reply_bytes, reply.len() as u64);
    assert_eq!(one(&mut c, &cmd(&["PING"]), b"+PONG\r\n").operation, "PING");
}

#[test]
fn a_push_between_replies_is_skipped() {
    let mut c = RedisConversation::new();
    let request = [cmd(&["GET", "a"]), cmd(&["GET", "b"])].concat();
    let reply = b"$1\r\nx\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n$-1\r\n";
    let all = exchange(&mut c, 10, &request, reply);
    let misses: Vec<_> = all.iter().map(|d| (d.seq, d.miss)).collect();
    assert_eq!(misses, vec![(0, Some(false)), (1, Some(true))]);
    assert_eq!(all[1].reply_bytes, 5, "the push is no part of the reply");
    assert_eq!(c.stats().pushes_skipped, 1);
}

#[test]
fn an_attribute_precedes_its_reply_and_is_not_one() {
    let mut c = RedisConversation::new();
    let reply = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n$1\r\nx\r\n";
    let get = one(&mut c, &cmd(&["GET", "a"]), reply);
    assert_eq!(get.miss, Some(false));
    assert_eq!(get.reply_bytes, reply.len() as u64);
    // Nested, before an element.
    let reply = b"*2\r\n|1\r\n+ttl\r\n:10\r\n$-1\r\n$-1\r\n";
    let mget = one(&mut c, &cmd(&["MGET", "a", "b"]), reply);
    assert_eq!(mget.miss, Some(true));
}

#[test]
fn subscriptions_pair_with_their_first_confirmation_and_messages_are_skipped() {
    // RESP2: confirmations and messages are arrays.
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(
        chunk(Flow::Request, 10, &cmd(&["SUBSCRIBE", "a", "b"])),
        &mut events,
    );
    let confirmations = [
        b"*3\r\n".to_vec(),
        bulk(b"subscribe"),
        bulk(b"a"),
        b":1\r\n".to_vec(),
        b"*3\r\n".to_vec(),
        bulk(b"subscribe"),
        bulk(b"b"),
        b":2\r\n".to_vec(),
        b"*3\r\n".to_vec(),
        bulk(b"message"),
        bulk(b"a"),
        bulk(b"hello"),
    ]
    .concat();
    c.push(chunk(Flow::Response, 20, &confirmations), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].text, "SUBSCRIBE ? ?");
    assert_eq!(c.stats().pushes_skipped, 2);
    // Another subscription pipelined after one of two channels: the second channel's
    // confirmation does not answer it.
    let mut events = Vec::new();
    let request = [cmd(&["PSUBSCRIBE", "x*", "y*"]), cmd(&["SUBSCRIBE", "z"])].concat();
    c.push(chunk(Flow::Request, 30, &request), &mut events);
    let confirm = |kind: &[u8], channel: &[u8], n: &[u8]| {
        [b"*3\r\n".to_vec(), bulk(kind), bulk(channel), n.to_vec()].concat()
    };
    c.push(
        chunk(
            Flow::Response,
            40,
            &confirm(b"psubscribe", b"x*", b":3\r\n"),
        ),
        &mut events,
    );
    c.push(
        chunk(
            Flow::Response,
            50,
            &confirm(b"psubscribe", b"y*", b":4\r\n"),
        ),
        &mut events,
    );
    assert_eq!(done(&events).len(), 1, "{events:?}");
    c.push(
        chunk(Flow::Response, 60, &confirm(b"subscribe", b"z", b":5\r\n")),
        &mut events,
    );
    let all = done(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[1].operation.as_str(), all[1].end.enter_ns),
        ("SUBSCRIBE", 60)
    );
    // PING in subscriber mode answers an array that is a reply.
    let ping = one(&mut c, &cmd(&["PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(ping.operation, "PING");

    // RESP3: they are pushes, and other commands answer between them.
    let mut c = RedisConversation::new();
    let hello = one(
        &mut c,
        &cmd(&["HELLO", "3"]),
        b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n",
    );
    assert_eq!(hello.text, "HELLO ?");
    let push = [
        b">3\r\n".to_vec(),
        bulk(b"subscribe"),
        bulk(b"news"),
        b":1\r\n".to_vec(),
    ]
    .concat();
    let sub = one(&mut c, &cmd(&["SUBSCRIBE", "news"]), &push);
    assert_eq!(sub.operation, "SUBSCRIBE");
    let message = [
        b">3\r\n".to_vec(),
        bulk(b"message"),
        bulk(b"news"),
        bulk(b"hi"),
        bulk(b"v"),
    ]
    .concat();
    let get = one(&mut c, &cmd(&["GET", "k"]), &message);
    assert_eq!(get.miss, Some(false));
    assert_eq!(get.reply_bytes, 7);
}

#[test]
fn a_connection_open_before_attach_is_read_from_its_next_command() {
    let mut c = RedisConversation::resumed();
    let mut events = Vec::new();
    // The end of a reply to a command sent before attach, then the end of a large write.
    c.push(
        chunk(Flow::Response, 1, b"lue\r\n$3\r\nbar\r\n"),
        &mut events,
    );
    c.push(chunk(Flow::Request, 2, b"xyz\r\n"), &mut events);
    assert!(events.is_empty(), "{events:?}");
    let get = cmd(&["GET", "k"]);
    assert!(looks_like_resp(&get, get.len(), true));
    c.push(chunk(Flow::Request, 3, &get), &mut events);
    assert_eq!(events, vec![RedisEvent::Started { seq: 0 }]);
    c.push(chunk(Flow::Response, 4, b"$3\r\nbar\r\n"), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].miss, Some(false));
    assert_eq!(all[0].database, None, "found open: its SELECT went unseen");
    assert_eq!(c.stats().lost_framing, 0, "joining is not losing");
}

#[test]
fn a_resumed_connection_ignores_replies_until_a_command_is_sent() {
    let mut c = RedisConversation::resumed();
    let mut events = Vec::new();
    // A whole reply, but to a command loupe did not see.
    c.push(chunk(Flow::Response, 1, b"+OK\r\n"), &mut events);
    let ping = one(&mut c, &cmd(&["PING"]), b"+PONG\r\n");
    assert_eq!(ping.seq, 0);
    assert_eq!(c.stats().unpaired, 0);
}

#[test]
fn inline_commands_are_read_as_arrays_are() {
    let mut c = RedisConversation::new();
    assert!(opens_redis(b"PING\r\n"));
    let ping = one(&mut c, b"PING\r\n", b"+PONG\r\n");
    assert_eq!(
        (ping.operation.as_str(), ping.text.as_str()),
        ("PING", "PING")
    );
    let set = one(&mut c, b"set  greeting hello\r\n", b"+OK\r\n");
    assert_eq!(set.text, "SET ? ?");
    let array = one(&mut c, &cmd(&["set", "greeting", "hello"]), b"+OK\r\n");
    assert_eq!(
        set.values_hash, array.values_hash,
        "the same call either way"
    );
    assert_eq!(set.key_hash, array.key_hash);
    // Bare LF, as Redis accepts.
    let get = one(&mut c, b"GET greeting\n", b"$5\r\nhello\r\n");
    assert_eq!(get.miss, Some(false));
}

#[test]
fn subcommands_stay_in_the_text_and_out_of_the_operation() {
    let mut c = RedisConversation::new();
    let setname = one(&mut c, &cmd(&["CLIENT", "SETNAME", "worker-1"]), b"+OK\r\n");
    assert_eq!(setname.operation, "CLIENT");
    assert_eq!(setname.text, "CLIENT SETNAME ?");
    let config = one(
        &mut c,
        &cmd(&["config", "get", "maxmemory"]),
        b"*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n",
    );
    assert_eq!(
        (config.operation.as_str(), config.text.as_str()),
        ("CONFIG", "CONFIG GET ?")
    );
    let object = one(
        &mut c,
        &cmd(&["OBJECT", "ENCODING", "k"]),
        b"$6\r\nembstr\r\n",
    );
    assert_eq!(object.text, "OBJECT ENCODING ?");
    assert_eq!(object.key_hash, None);
    let command = one(&mut c, &cmd(&["COMMAND"]), b"*0\r\n");
    assert_eq!(command.text, "COMMAND");
    // Many arguments are written up to a bound.
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let mut words = vec!["DEL"];
    words.extend(keys.iter().map(String::as_str));
    let del = one(&mut c, &cmd(&words), b":100\r\n");
    assert_eq!(del.text, format!("DEL{} ...", " ?".repeat(64)));
}

#[test]
fn a_reply_framing_lost_in_a_gap_ends_when_the_client_speaks_again() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(
        chunk(Flow::Request, 10, &cmd(&["LRANGE", "l", "0", "-1"])),
        &mut events,
    );
    let mut reply = b"*1000\r\n".to_vec();
    for i in 0..1000 {
        reply.extend(bulk(format!("item{i}").as_bytes()));
    }
    c.push(
        Chunk {
            flow: Flow::Response,
            enter_ns: 20,
            exit_ns: 21,
            captured: &reply[..64],
            total_len: 4096,
            tail: &[],
        },
        &mut events,
    );
    c.push(
        Chunk {
            flow: Flow::Response,
            enter_ns: 30,
            exit_ns: 31,
            captured: &reply[4096..4096 + 64],
            total_len: reply.len() - 4096,
            tail: &[],
        },
        &mut events,
    );
    assert!(done(&events).is_empty());
    assert_eq!(c.stats().lost_framing, 1);
    c.push(chunk(Flow::Request, 40, &cmd(&["GET", "k"])), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].operation, "LRANGE");
    assert_eq!(all[0].end.exit_ns, 31);
    assert_eq!(all[0].miss, Some(false), "the array was not empty");
    assert_eq!(all[0].reply_bytes, reply.len() as u64);
    // The next reply is framed again.
    c.push(chunk(Flow::Response, 50, b"$-1\r\n"), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[1].operation.as_str(), all[1].miss),
        ("GET", Some(true))
    );
}

#[test]
fn garbage_from_the_client_abandons_its_command_and_the_next_command_resyncs() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(
        chunk(Flow::Request, 10, b"*2\r\n$3\r\nGET\r\n%%%%\r\n"),
        &mut events,
    );
    assert_eq!(
        events,
        vec![
            RedisEvent::Started { seq: 0 },
            RedisEvent::Abandoned { seq: 0 }
        ]
    );
    assert_eq!(c.stats().cut, 1);
    assert_eq!(c.stats().lost_framing, 1);
    assert!(c.last_loss().is_some());
    let get = one(&mut c, &cmd(&["GET", "k"]), b"$-1\r\n");
    assert_eq!(get.seq, 1);
}

#[test]
fn a_full_queue_drops_the_oldest_and_skips_its_reply() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    let n = MAX_PENDING + 44;
    for i in 0..n {
        c.push(
            chunk(Flow::Request, i as u64, &cmd(&["GET", &format!("k{i}")])),
            &mut events,
        );
    }
    assert_eq!(c.stats().overflowed, 44);
    // Even commands miss, odd ones hit.
    let mut reply = Vec::new();
    for i in 0..n {
        reply.extend_from_slice(if i % 2 == 0 {
            b"$-1\r\n"
        } else {
            b"$1\r\nv\r\n"
        });
    }
    c.push(chunk(Flow::Response, 1000, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), MAX_PENDING);
    assert!(
        all.iter()
            .all(|d| d.miss == Some(d.seq % 2 == 0) && d.seq >= 44),
        "each reply with its command"
    );
    let abandoned = events
        .iter()
        .filter(|e| matches!(e, RedisEvent::Abandoned { .. }))
        .count();
    assert_eq!(abandoned, 44);
}

#[test]
fn commands_unanswered_at_close_are_abandoned() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    c.push(
        chunk(Flow::Request, 1, &cmd(&["BLPOP", "q", "0"])),
        &mut events,
    );
    c.push(chunk(Flow::Request, 2, b"*2\r\n$3\r\nGET"), &mut events);
    c.close(&mut events);
    assert_eq!(
        events,
        vec![
            RedisEvent::Started { seq: 0 },
            RedisEvent::Started { seq: 1 },
            RedisEvent::Abandoned { seq: 0 },
            RedisEvent::Abandoned { seq: 1 },
        ]
    );
    assert_eq!(c.stats().unanswered, 2);
}

#[test]
fn only_commands_look_like_resp() {
    let pg_startup = {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0database\0shop\0\0");
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let pg_query = b"Q\x00\x00\x00\x0dSELECT 1;\x00";
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"POST /api HTTP/1.1\r\n",
        &pg_startup,
        pg_query,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"+OK\r\n",
        b":1\r\n",
        b"*1\r\n:1\r\n",
        b"*1\r\n$4\r\n1234\r\n",
        b"*1\r\n$40\r\nGET",
        b"*0\r\n",
        b"QUIT\r\n",
        b"EHLO mail.example.com\r\n",
        b"* OK IMAP4rev1 ready\r\n",
        b"",
    ] {
        assert!(!looks_like_resp(bytes, bytes.len(), true), "{bytes:?}");
        assert!(!looks_like_resp(bytes, bytes.len(), false), "{bytes:?}");
        assert!(!opens_redis(bytes), "{bytes:?}");
    }
    let pipeline = [
        cmd(&["HELLO", "3"]),
        cmd(&["CLIENT", "SETNAME", "app"]),
        cmd(&["GET", "k"]),
    ]
    .concat();
    assert!(looks_like_resp(&pipeline, pipeline.len(), true));
    assert!(opens_redis(&pipeline));
    assert!(
        !looks_like_resp(&pipeline, pipeline.len(), false),
        "what the server sends is never enough"
    );
    // Cut by the capture, after a name: judged on what was seen.
    let big = [
        b"*3\r\n".to_vec(),
        bulk(b"SET"),
        bulk(b"k"),
        bulk(&[b'v'; 5000]),
    ]
    .concat();
    assert!(looks_like_resp(&big[..30], big.len(), true));
    assert!(looks_like_resp(&big[..1024], big.len(), true));
    assert!(
        !looks_like_resp(&big[..6], big.len(), true),
        "the name was not seen"
    );
    // A write of the header of a large value alone (redis-py writes it apart).
    assert!(looks_like_resp(&big[..27], 27, true));
    // A write whose commands do not tile it is something else.
    let mut ragged = cmd(&["GET", "k"]);
    ragged.extend_from_slice(b"xx");
    assert!(!looks_like_resp(&ragged, ragged.len(), true));
    // Inline openings, only for a new connection.
    for inline in [
        &b"PING\r\n"[..],
        b"HELLO 3\r\n",
        b"AUTH secret\r\n",
        b"select 2\r\n",
    ] {
        assert!(opens_redis(inline), "{inline:?}");
        assert!(!looks_like_resp(inline, inline.len(), true), "{inline:?}");
    }
    assert!(!opens_redis(b"SELECT db\r\n"));
    assert!(!opens_redis(b"PING"));
}

#[test]
fn random_bytes_never_panic_and_every_started_command_ends_once() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        cmd(&["GET", "k"]),
        cmd(&["SET", "k", "v"]),
        cmd(&["MGET", "a", "b"]),
        cmd(&["SELECT", "3"]),
        cmd(&["SUBSCRIBE", "c"]),
        b"PING\r\n".to_vec(),
        b"+OK\r\n".to_vec(),
        b"$-1\r\n".to_vec(),
        b"$3\r\nabc\r\n".to_vec(),
        b"*2\r\n$1\r\na\r\n_\r\n".to_vec(),
        b"%1\r\n+a\r\n:1\r\n".to_vec(),
        b"|1\r\n+a\r\n+b\r\n".to_vec(),
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n".to_vec(),
        b"-ERR no\r\n".to_vec(),
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n".to_vec(),
    ];
    let (mut paired, mut lost) = (0, 0);
    for _ in 0..3_000 {
        let mut c = if next() % 2 == 0 {
            RedisConversation::new()
        } else {
            RedisConversation::resumed()
        };
        let mut events = Vec::new();
        for i in 0..(next() % 30) {
            let mut bytes: Vec<u8> = if next() % 4 == 0 {
                (0..next() % 40).map(|_| next() as u8).collect()
            } else {
                (0..1 + next() % 3)
                    .flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].clone())
                    .collect()
            };
            if !bytes.is_empty() && next() % 5 == 0 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            // Random splits into several syscalls, each with a random capture.
            let mut rest = &bytes[..];
            let flow = if next() % 2 == 0 {
                Flow::Request
            } else {
                Flow::Response
            };
            while !rest.is_empty() {
                let len = 1 + (next() % rest.len() as u64) as usize;
                let (part, after) = rest.split_at(len);
                rest = after;
                let captured = if next() % 4 == 0 {
                    (next() % (part.len() as u64 + 1)) as usize
                } else {
                    part.len()
                };
                c.push(
                    Chunk {
                        flow,
                        enter_ns: i,
                        exit_ns: i,
                        captured: &part[..captured],
                        total_len: part.len() + (next() % 3) as usize * 100,
                        tail: &[],
                    },
                    &mut events,
                );
            }
        }
        c.close(&mut events);
        let mut open = std::collections::BTreeSet::new();
        for event in &events {
            match event {
                RedisEvent::Started { seq } => assert!(open.insert(*seq), "{events:?}"),
                RedisEvent::Done(CommandDone { seq, .. }) | RedisEvent::Abandoned { seq } => {
                    assert!(
                        open.remove(seq),
                        "{seq} ended twice or unstarted: {events:?}"
                    )
                }
            }
        }
        assert!(open.is_empty(), "{open:?} never ended: {events:?}");
        paired += done(&events).len();
        lost += c.stats().lost_framing;
    }
    // The loop reaches the pairing, not only the losses.
    assert!(
        paired > 1_000 && lost > 1_000,
        "{paired} paired, {lost} lost"
    );
}

#[test]
fn a_pipeline_larger_than_the_capture_pairs_what_was_seen() {
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    let request: Vec<u8> = (0..100)
        .flat_map(|i| cmd(&["GET", &format!("key:{i:04}")]))
        .collect();
    c.push(
        Chunk {
            flow: Flow::Request,
            enter_ns: 10,
            exit_ns: 11,
            captured: &request[..1020],
            total_len: request.len(),
            tail: &[],
        },
        &mut events,
    );
    // 27 bytes a command: 37 seen whole (999 bytes), and the 38th's key cut by the capture
    // after 4 bytes, the rest of it skipped by count; the 39th's header is in the uncaptured
    // tail.
    let seen = 38;
    assert_eq!(c.stats().lost_framing, 1, "a header in the uncaptured tail");
    // Every reply, read in one go: the seen commands' pair, the rest answer nothing seen.
    let reply: Vec<u8> = (0..100).flat_map(|_| b"$-1\r\n".to_vec()).collect();
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), seen);
    assert!(
        all.iter()
            .all(|d| d.miss == Some(true) && d.end.exit_ns == 21)
    );
    assert!(all[..seen - 1].iter().all(|d| d.key_hash.is_some()));
    assert_eq!(all[seen - 1].key_hash, None, "the key was not seen whole");
    assert_eq!(c.stats().cut, 0);
    assert_eq!(c.stats().unpaired, 100 - seen as u64);
    // The next write is read again.
    let ping = one(&mut c, &cmd(&["PING"]), b"+PONG\r\n");
    assert_eq!(ping.operation, "PING");
}

/// One reply of every type, nested aggregates, an attribute and pushes between them.
fn every_type() -> Vec<(&'static [u8], Option<&'static str>)> {
    vec![
        (b"+OK\r\n", None),
        (b"-ERR unknown command 'FOO'\r\n", Some("ERR")),
        (b":-42\r\n", None),
        (b"$3\r\nabc\r\n", None),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"_\r\n", None),
        (b",3.14\r\n", None),
        (b",-inf\r\n", None),
        (b"#t\r\n", None),
        (b"!9\r\nBUSY stop\r\n", Some("BUSY")),
        (b"=15\r\ntxt:Some string\r\n", None),
        (b"(3492890328409238509324850943850943825024385\r\n", None),
        (
            b"%2\r\n+a\r\n*2\r\n:1\r\n~1\r\n$1\r\nz\r\n$1\r\nb\r\n%1\r\n#f\r\n_\r\n",
            None,
        ),
        (b"~2\r\n+x\r\n+y\r\n", None),
        (b"|1\r\n+ttl\r\n:3\r\n:1\r\n", None),
        (b"*3\r\n*0\r\n%0\r\n*1\r\n*1\r\n*1\r\n$0\r\n\r\n", None),
    ]
}

#[test]
fn every_type_is_framed_fed_a_byte_at_a_time() {
    let replies = every_type();
    let mut c = RedisConversation::new();
    let mut events = Vec::new();
    let request: Vec<u8> = (0..replies.len())
        .flat_map(|i| cmd(&["ECHO", &i.to_string()]))
        .collect();
    c.push(chunk(Flow::Request, 1, &request), &mut events);
    let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
    let stream: Vec<u8> = replies
        .iter()
        .flat_map(|(reply, _)| [&push[..], reply].concat())
        .collect();
    for (i, byte) in stream.iter().enumerate() {
        c.push(
            chunk(Flow::Response, 10 + i as u64, std::slice::from_ref(byte)),
            &mut events,
        );
    }
    let all = done(&events);
    assert_eq!(all.len(), replies.len(), "{:?}", c.stats());
    for (d, (reply, error)) in all.iter().zip(&replies) {
        assert_eq!(d.reply_bytes, reply.len() as u64, "{reply:?}");
        assert_eq!(d.error.as_deref(), *error, "{reply:?}");
        assert_eq!(d.text, "ECHO ?");
    }
    assert_eq!(c.stats().pushes_skipped, replies.len() as u64);
    assert_eq!(c.stats().lost_framing, 0);
}

#[test]
fn random_splits_of_a_stream_read_as_the_whole_stream_does() {
    let replies = every_type();
    let mut words: Vec<Vec<u8>> = Vec::new();
    for i in 0..replies.len() {
        words.push(match i % 3 {
            0 => cmd(&["GET", &format!("k{i}")]),
            1 => cmd(&["MGET", "a", &format!("k{i}")]),
            _ => format!("HGETALL k{i}\r\n").into_bytes(),
        });
    }
    let request = words.concat();
    let reply: Vec<u8> = replies.iter().flat_map(|(r, _)| r.to_vec()).collect();
    let read = |splits: &mut dyn FnMut(usize) -> usize| {
        let mut c = RedisConversation::new();
        let mut events = Vec::new();
        for (flow, bytes) in [(Flow::Request, &request), (Flow::Response, &reply)] {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (part, after) = rest.split_at(splits(rest.len()));
                rest = after;
                c.push(chunk(flow, 0, part), &mut events);
            }
        }
        done(&events)
            .into_iter()
            .map(|d| {
                (
                    d.seq,
                    d.operation.clone(),
                    d.text.clone(),
                    d.key_hash,
                    d.values_hash,
                    d.miss,
                    d.error.clone(),
                    d.reply_bytes,
                )
            })
            .collect::<Vec<_>>()
    };
    let whole = read(&mut |len| len);
    assert_eq!(whole.len(), replies.len());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..500 {
        let mut splits = |len: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            1 + (state % len.min(12) as u64) as usize
        };
        assert_eq!(read(&mut splits), whole);
    }
}
