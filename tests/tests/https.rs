//! HTTPS end to end through OpenSSL's uprobes, against real parts: nginx over TLS (a self-signed
//! certificate the test makes) driven by curl and by Python `requests`, and a Python shop whose
//! requests call that nginx over HTTPS (the external-API case). loupe reads the plaintext where
//! OpenSSL hands it over, so both sides are spans as over plain HTTP, with `https` for their
//! scheme; the ciphertext on those connections is never parsed.

use std::process::Command;

use loupe_tests::{
    calls::call_path,
    client::{Client, concurrently},
    jaeger::{Jaeger, Span},
    procs::{Downstream, Loupe, Nginx, TlsShop, otlp_args},
    require_root,
};

fn servers(spans: &[Span]) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind() == "server").collect()
}

#[test]
fn nginx_over_tls_is_one_https_span_per_request_from_curl_and_requests() {
    require_root();
    let jaeger = Jaeger::start();
    let downstream = Downstream::start();
    let nginx = Nginx::tls_proxy(&downstream.addr);
    let service = "nginx-tls";
    let loupe = Loupe::attach(&otlp_args(
        nginx.master_pid(),
        &jaeger.grpc_endpoint(),
        service,
        &[],
    ));
    let cert = nginx.cert_path();
    // curl: a process and a TLS connection per request.
    for n in 0..5 {
        let status = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(&cert)
            .arg(format!("https://{}/curl/{n}", nginx.addr))
            .status()
            .expect("run curl");
        assert!(status.success(), "curl");
    }
    // requests: one keep-alive TLS connection for all.
    let python = loupe_tests::cache_dir().join("venv/bin/python");
    let script = format!(
        "import requests\ns = requests.Session()\nfor n in range(5):\n    \
         assert s.get('https://{}/py/%d' % n, verify='{}').status_code == 200\n",
        nginx.addr,
        cert.display()
    );
    let status = Command::new(&python)
        .args(["-c", &script])
        .status()
        .expect("run python");
    assert!(status.success(), "requests");
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("libssl"),
        "libssl is probed:\n{}",
        finished.stderr
    );

    let spans = jaeger.wait_for_spans(service, 10, |s| s.kind() == "server");
    let servers = servers(&spans);
    for prefix in ["/curl/", "/py/"] {
        for n in 0..5 {
            let path = format!("{prefix}{n}");
            let found: Vec<&&Span> = servers
                .iter()
                .filter(|s| s.str_tag("url.path") == Some(path.as_str()))
                .collect();
            assert_eq!(found.len(), 1, "{path}: one server span: {servers:#?}");
            let span = found[0];
            assert_eq!(span.str_tag("url.scheme"), Some("https"), "{path}");
            assert_eq!(span.int_tag("http.response.status_code"), Some(200));
            assert_eq!(span.int_tag("http.response.body.size"), Some(3), "`ok\\n`");
            assert_eq!(span.str_tag("http.request.method"), Some("GET"));
        }
    }
    assert_eq!(
        servers.len(),
        10,
        "no span made of ciphertext: {servers:#?}"
    );
    assert_eq!(finished.summary()["decode_errors"], 0);
}

#[test]
fn an_https_call_nests_under_its_request_with_its_url_and_slowness() {
    require_root();
    let jaeger = Jaeger::start();
    let downstream = Downstream::start();
    let nginx = Nginx::tls_proxy(&downstream.addr);
    let shop = TlsShop::start(&format!("https://{}", nginx.addr), &nginx.cert_path());
    // Warm: nginx's pool to the downstream and the shop's interpreter (its first TLS
    // handshakes done) before loupe attaches.
    concurrently(&shop.addr, 4, 2, |_, _| ("/warm".to_owned(), ()));
    // And one client whose connection outlives the attach: its shop thread's TLS connection to
    // nginx is open, handshake done, before loupe attaches.
    let mut warm = Client::connect(&shop.addr).expect("connect to the shop");
    warm.get_ok("/warm");
    let service = "tls-shop";
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        service,
        &["--slow-external", "200ms"],
    ));
    let sent: Vec<(String, u64)> = concurrently(&shop.addr, 4, 6, |c, n| {
        let id = format!("c{c}n{n}");
        let ms = if n % 3 == 0 { 400 } else { 5 };
        (format!("/fetch/{id}?ms={ms}"), (id, ms))
    });
    // The warm connection's thread was blocked reading it when loupe attached: that read's
    // entry went unseen, so the request it returns is not seen (its call is, as a root). The
    // requests after it are.
    warm.get_ok("/fetch/wake?ms=5");
    let mut sent = sent;
    for n in 0..3 {
        let id = format!("warm{n}");
        warm.get_ok(&format!("/fetch/{id}?ms=5"));
        sent.push((id, 5));
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans(service, 2 * sent.len(), |_| true);
    let by_id: std::collections::HashMap<&str, &Span> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let calls: Vec<&Span> = spans.iter().filter(|s| s.kind() == "client").collect();
    assert_eq!(
        calls.len(),
        sent.len() + 1,
        "one client span per call (and the wake-up's)"
    );
    for (id, ms) in &sent {
        let call = calls
            .iter()
            .find(|c| call_path(c).as_deref() == Some(format!("/sleep/{id}").as_str()))
            .unwrap_or_else(|| panic!("no call span for {id}: {calls:#?}"));
        let full = call.str_tag("url.full").unwrap_or_default();
        assert!(
            full.starts_with(&format!("https://{}/sleep/{id}", nginx.addr)),
            "{full}"
        );
        let parent = call
            .parent
            .as_deref()
            .and_then(|p| by_id.get(p))
            .unwrap_or_else(|| panic!("{id}: the call has a parent: {:?}", call.tags));
        assert_eq!(
            parent.str_tag("url.path"),
            Some(format!("/fetch/{id}").as_str()),
            "{id}: under its own request"
        );
        let slow = *ms >= 400;
        assert_eq!(call.is_slow(), slow, "{id}: slow as planted");
        assert_eq!(
            parent.patterns().iter().any(|p| p == "slow_dependency"),
            slow,
            "{id}: {:?}",
            parent.patterns()
        );
    }
}
