//! CPU profiles of slow spans, end to end: the demo app's /api/crunch burns CPU in a function of
//! its own (`crunch_numbers`) and in libcrypto's SHA256; loupe samples the thread once the
//! request passes its threshold and the slow span in Jaeger carries a `cpu_profile` event naming
//! both, with a flamegraph on disk. A fast request carries none; a request slow because it
//! sleeps shows few or no samples.

use loupe_tests::{
    TempDir,
    client::get,
    jaeger::{Jaeger, Span},
    procs::{DemoApp, Loupe, otlp_args},
    require_root,
};
use serde_json::Value;

fn profile(span: &Span) -> Option<&std::collections::HashMap<String, Value>> {
    span.events("cpu_profile").first().copied()
}

#[test]
fn a_slow_cpu_bound_request_carries_its_stacks_and_a_sleeping_one_does_not() {
    require_root();
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let dir = TempDir::new("profiles");
    let profile_dir = dir.0.display().to_string();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-profile",
        &["--slow-http", "300ms", "--profile-dir", &profile_dir],
    ));
    assert_eq!(get(&demo.frontend_addr, "/api/crunch?ms=1500").status, 200);
    assert_eq!(get(&demo.frontend_addr, "/api/users/7").status, 200);
    assert_eq!(get(&demo.frontend_addr, "/api/slow").status, 200);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-profile", 3, |s| s.kind() == "server");
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.operation == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
    };

    let crunch = by_name("GET /api/crunch");
    assert!(crunch.is_slow());
    let event = profile(crunch).unwrap_or_else(|| panic!("no cpu_profile: {:?}", crunch.logs));
    let samples = event["samples"].as_i64().unwrap();
    // Sampled from about 300 ms (plus up to one 250 ms tick) to 1.5 s at 999 Hz.
    assert!(samples >= 300, "{samples} samples");
    // On a CPU the whole time it was sampled (a loaded CI box may run it a little less).
    let on_cpu = event["on_cpu_share"].as_f64().unwrap();
    assert!(on_cpu > 0.7 && on_cpu <= 1.0, "on-CPU share {on_cpu}");
    let sampled_ms = event["sampled_ms"].as_i64().unwrap();
    assert!(
        (900..=1300).contains(&sampled_ms),
        "sampled for {sampled_ms} ms"
    );
    let stacks = event["stacks"].as_str().unwrap();
    assert!(stacks.contains("demo-app!"), "{stacks}");
    assert!(stacks.contains("crunch_numbers"), "{stacks}");
    assert!(stacks.contains("libcrypto.so.3"), "{stacks}");
    assert!(stacks.len() <= 4096);
    for line in stacks.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        assert!(count.parse::<u64>().unwrap() >= 1, "{line}");
        assert!(!stack.is_empty());
    }
    let path = crunch.str_tag("performance.profile.path").unwrap();
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("crunch_numbers"));
    assert!(
        std::path::Path::new(path)
            .with_extension("folded")
            .is_file()
    );

    let fast = by_name("GET /api/users/{id}");
    assert!(!fast.is_slow());
    assert!(profile(fast).is_none(), "a fast request is never sampled");

    // 1.2 s asleep: the thread is hot for 0.9 s but hardly on a CPU.
    let sleepy = by_name("GET /api/slow");
    assert!(sleepy.is_slow());
    let sleepy_samples = profile(sleepy).map_or(0, |e| e["samples"].as_i64().unwrap());
    assert!(
        sleepy_samples <= 20,
        "{sleepy_samples} samples while asleep"
    );

    // The hottest frames of the slow routes, at exit.
    assert!(
        finished.stderr.contains("loupe: hottest frames")
            && finished.stderr.contains("GET /api/crunch ("),
        "{}",
        finished.stderr
    );
}
