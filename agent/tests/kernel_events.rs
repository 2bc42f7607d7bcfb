//! The kernel programs against real sockets: the test process targets itself, drives loopback
//! TCP traffic, and reads the ring buffer directly. Needs root: `cargo xtask test` runs these.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use loupe::{
    events::{Event, FdNews, SampleSource, decode, decode_fd_news},
    preflight,
    probes::{EvictionAudit, ExecWatch, LossCounters, ProbeConfig, Probes, load_and_attach},
    process::Target,
};
use loupe_common::{Direction, SocketRole};

/// One attached set of probes at a time: they all target this process.
static SERIAL: Mutex<()> = Mutex::new(());

fn attach(capture_bytes: u32) -> Probes {
    attach_to(std::process::id(), capture_bytes)
}

fn attach_to(me: u32, capture_bytes: u32) -> Probes {
    attach_with(me, capture_bytes, loupe_common::SOCKETS_MAX)
}

fn attach_with(me: u32, capture_bytes: u32, max_sockets: u32) -> Probes {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "needs root: run with `cargo xtask test`");
    preflight::check(&[me]).expect("preflight");
    let config = ProbeConfig {
        capture_bytes,
        query_bytes: 2048,
        wakeup_bytes: 1,
        watch: Default::default(),
        max_sockets,
        off_cpu_gap_ns: 1_001_001,
    };
    load_and_attach(
        &config,
        &[Target {
            pid: me,
            root_pid: me,
        }],
    )
    .expect("load and attach")
}

/// Reads events until `done` says so or the timeout passes; returns all of them.
fn collect_until(
    probes: &mut Probes,
    timeout: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    collect_with_news(probes, timeout, |events, _| done(events)).0
}

/// As `collect_until`, keeping the kernel's news about fds (for the re-sync) apart.
fn collect_with_news(
    probes: &mut Probes,
    timeout: Duration,
    done: impl Fn(&[Event], &[FdNews]) -> bool,
) -> (Vec<Event>, Vec<FdNews>) {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    let mut news = Vec::new();
    while Instant::now() < deadline {
        while let Some(item) = probes.events.next() {
            let record = Bytes::copy_from_slice(&item);
            match decode_fd_news(&record) {
                Some(item) => news.push(item.expect("decodes")),
                None => events.push(decode(&record).expect("decodes")),
            }
        }
        if done(&events, &news) {
            return (events, news);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (events, news)
}

fn data_on(events: &[Event], fd: i32, direction: Direction) -> Vec<&loupe::events::DataRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Data(d) if d.fd == fd && d.direction == direction => Some(d),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn socket_traffic_of_the_target_reaches_userspace_with_payload_and_roles() {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(1024);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    client
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).unwrap();
    assert_eq!(n, 32);
    let (server_fd, client_fd) = (server.as_raw_fd(), client.as_raw_fd());

    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        !data_on(events, server_fd, Direction::Ingress).is_empty()
    });
    let conns: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Conn(c) => Some(c),
            _ => None,
        })
        .collect();
    let accepted = conns
        .iter()
        .find(|c| c.fd == server_fd)
        .expect("accept seen");
    assert_eq!(accepted.role, SocketRole::Server);
    assert_eq!(accepted.peer, Some(peer));
    let connected = conns
        .iter()
        .find(|c| c.fd == client_fd)
        .expect("connect seen");
    assert_eq!(connected.role, SocketRole::Client);
    assert_eq!(connected.peer, Some(listener.local_addr().unwrap()));
    assert_eq!(
        connected.local,
        Some(client.local_addr().unwrap()),
        "a connect knows its own end too"
    );
    assert_eq!(accepted.local, None);

    let written = data_on(&events, client_fd, Direction::Egress);
    assert_eq!(written.len(), 1);
    assert_eq!(
        &written[0].payload[..],
        b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let read = data_on(&events, server_fd, Direction::Ingress);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].total_len, 32);
    assert!(read[0].enter_ns <= read[0].exit_ns);
    assert_eq!(read[0].pid, std::process::id());

    drop(client);
    drop(server);
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        events
            .iter()
            .filter(
                |e| matches!(e, Event::Close { fd, .. } if *fd == server_fd || *fd == client_fd),
            )
            .count()
            == 2
    });
    let closes = events
        .iter()
        .filter(|e| matches!(e, Event::Close { .. }))
        .count();
    assert_eq!(closes, 2, "both tracked sockets report their close");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn large_write_is_counted_in_full_and_captured_up_to_the_limit() {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let server_fd = server.as_raw_fd();
    let reader = std::thread::spawn(move || {
        let mut sink = vec![0u8; 10_000];
        server.read_exact(&mut sink).unwrap();
    });
    client.write_all(&body).unwrap();
    reader.join().unwrap();
    let fd = client.as_raw_fd();
    let moved = |events: &[Event], fd: i32, direction: Direction| {
        data_on(events, fd, direction)
            .iter()
            .map(|d| d.total_len as usize)
            .sum::<usize>()
    };
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        moved(events, fd, Direction::Egress) == 10_000
            && moved(events, server_fd, Direction::Ingress) == 10_000
    });
    // Each read longer than the capture also brings its last bytes (at most 128): where a
    // reply ends.
    let mut at = 0;
    let reads = data_on(&events, server_fd, Direction::Ingress);
    assert!(
        reads.iter().any(|d| d.total_len > 256 + 128),
        "{} reads",
        reads.len()
    );
    for read in &reads {
        let total = read.total_len as usize;
        let head = total.min(256);
        assert_eq!(&read.payload[..], &body[at..at + head], "the first bytes");
        let tail = total.saturating_sub(256).min(128);
        assert_eq!(
            &read.tail[..],
            &body[at + total - tail..at + total],
            "the last bytes"
        );
        at += total;
    }
    let writes = data_on(&events, fd, Direction::Egress);
    assert_eq!(
        writes.iter().map(|d| d.total_len as usize).sum::<usize>(),
        10_000
    );
    assert_eq!(
        writes[0].payload.len(),
        256,
        "capture stops at --capture-bytes"
    );
    assert_eq!(&writes[0].payload[..], &body[..256]);
    assert!(
        writes.iter().all(|w| w.tail.is_empty()),
        "writes have no tail"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn traffic_of_an_untargeted_process_is_not_seen() {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Started before attach, so it is not a forked child of a target: it stays untargeted.
    let mut other = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\nport=int(sys.stdin.readline())\ns=socket.create_connection(('127.0.0.1',port))\ns.sendall(b'GET /other HTTP/1.1\\r\\n\\r\\n')\ns.recv(100)\n",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut probes = attach(1024);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    writeln!(other.stdin.take().unwrap(), "{port}").unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let mut buf = [0u8; 512];
    let n = accepted.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"GET /other HTTP/1.1\r\n\r\n");
    accepted
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    other.wait().unwrap();
    let me = std::process::id();
    let fd = accepted.as_raw_fd();
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        !data_on(events, fd, Direction::Egress).is_empty()
    });
    assert_eq!(
        data_on(&events, fd, Direction::Ingress).len(),
        1,
        "the target's read is seen"
    );
    for event in &events {
        let pid = match event {
            Event::Data(d) => d.pid,
            Event::Conn(c) => c.pid,
            Event::Close { pid, .. } => *pid,
            Event::Fork { parent, .. } => *parent,
            Event::Dup { pid, .. } => *pid,
            Event::LibpqCall(c) => c.pid,
            Event::LibpqResult(r) => r.pid,
            Event::CpuSample(s) => s.pid,
            Event::OffCpu(w) => w.pid,
            Event::ConnLocal { pid, .. } | Event::GoCall { pid, .. } => *pid,
            Event::Exec(exec) => exec.pid,
        };
        assert_eq!(pid, me, "only the target's events: {event:?}");
    }
}

/// A loop with a name the samples must land in.
#[inline(never)]
fn spin_for_the_sampler(until: Instant) -> u64 {
    let mut x = 1u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_hot_thread_is_sampled_and_a_cooled_one_is_not() {
    use loupe::{probes::ThreadSampler, profile::ProfileCommand};

    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut probes = attach(256);
    let (heated, _reports) = tokio::sync::mpsc::unbounded_channel();
    let mut sampler = ThreadSampler::new(&mut probes.ebpf, 999, None, Some(heated))
        .expect("perf_event program loads");
    let me = std::process::id();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    sampler.apply(&mut probes.ebpf, ProfileCommand::Heat { pid: me, tid });
    assert_eq!(sampler.hot(), 1);
    spin_for_the_sampler(Instant::now() + Duration::from_millis(300));
    let samples = |events: &[Event]| -> Vec<loupe::events::CpuSample> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::CpuSample(s) if s.source == SampleSource::Hot => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        samples(events).len() >= 100
    });
    let hot = samples(&events);
    // 300 ms at 999 Hz: about 300 samples; a loaded CI machine may run the thread less.
    assert!(hot.len() >= 100, "{} samples", hot.len());
    assert!(hot.iter().all(|s| s.pid == me && s.tid == tid));
    let spin = spin_for_the_sampler as *const () as u64;
    let in_spin = hot
        .iter()
        .filter(|s| {
            s.user
                .first()
                .is_some_and(|&ip| ip >= spin && ip < spin + 4096)
        })
        .count();
    assert!(
        in_spin * 2 > hot.len(),
        "most samples are in the spinning function: {in_spin} of {}",
        hot.len()
    );

    sampler.apply(&mut probes.ebpf, ProfileCommand::Cool { tid });
    assert_eq!(sampler.hot(), 0);
    // Drain what was in flight, then spin cold: nothing more may arrive.
    let _ = collect_until(&mut probes, Duration::from_millis(200), |_| false);
    spin_for_the_sampler(Instant::now() + Duration::from_millis(200));
    let cold = collect_until(&mut probes, Duration::from_millis(300), |_| false);
    assert_eq!(samples(&cold).len(), 0, "a cooled thread is not sampled");
}

/// One vector syscall of `parts`, the way node-postgres writes a query (writev, one iovec per
/// message) or a server sends head and body (sendmsg).
fn iovecs(parts: &[&[u8]]) -> Vec<libc::iovec> {
    parts
        .iter()
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect()
}

/// A hot thread that sleeps: each time it comes back on a CPU it reports how long it was off,
/// with the stack it left with (kernel and user); a thread asleep on a lock when heated is
/// reported asleep there, and its wait ends when it wakes. Cooled, nothing more comes.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_hot_thread_off_the_cpu_reports_each_wait_with_its_stack() {
    use loupe::{probes::ThreadSampler, profile::ProfileCommand};

    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut probes = attach(256);
    let (heated, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let mut sampler =
        ThreadSampler::new(&mut probes.ebpf, 99, None, Some(heated)).expect("programs load");
    let me = std::process::id();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;

    // A second thread, blocked on a lock this one holds before it is heated.
    let lock = std::sync::Arc::new(std::sync::Mutex::new(()));
    let held = lock.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            drop(lock.lock().unwrap());
        })
    };
    let waiter_tid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));

    sampler.apply(&mut probes.ebpf, ProfileCommand::Heat { pid: me, tid });
    sampler.apply(
        &mut probes.ebpf,
        ProfileCommand::Heat {
            pid: me,
            tid: waiter_tid,
        },
    );
    let report = reports.try_recv().expect("a report of the first heat");
    assert_eq!(report.tid, tid);
    let report = reports.try_recv().expect("a report of the waiter's heat");
    assert_eq!(report.tid, waiter_tid);
    let asleep = report.asleep.expect("the waiter is asleep on the lock");
    assert!(
        asleep.kernel.iter().any(|f| f.contains("futex")),
        "{:?}",
        asleep.kernel
    );
    assert!(asleep.in_syscall, "it waits in futex(2)");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(held);
    waiter.join().unwrap();
    let waits = |events: &[Event], who: u32| -> Vec<loupe::events::OffCpuRecord> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::OffCpu(w) if w.tid == who => Some(*w),
                _ => None,
            })
            .collect()
    };
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        waits(events, tid)
            .iter()
            .filter(|w| w.on_ns - w.off_ns >= 25_000_000)
            .count()
            >= 3
            && !waits(events, waiter_tid).is_empty()
    });
    let mine = waits(&events, tid);
    let long: Vec<_> = mine
        .iter()
        .filter(|w| w.on_ns - w.off_ns >= 25_000_000)
        .collect();
    assert!(long.len() >= 3, "{mine:?}");
    assert!(
        mine.iter()
            .all(|w| w.pid == me && w.off_ns != 0 && w.on_ns > w.off_ns)
    );
    // The sleeps' stacks: recorded at the switch-out, with the nanosleep in the kernel.
    let stacks: Vec<&loupe::events::CpuSample> = events
        .iter()
        .filter_map(|e| match e {
            Event::CpuSample(s) if matches!(s.source, SampleSource::OffCpu { .. }) => Some(s),
            _ => None,
        })
        .collect();
    let stacked = long
        .iter()
        .filter(|w| w.stacked && stacks.iter().any(|s| s.tid == tid && s.ts_ns == w.off_ns))
        .count();
    assert!(stacked >= 3, "each 30 ms sleep has its stack: {stacked}");
    assert!(
        stacks
            .iter()
            .all(|s| !s.kernel.is_empty() && s.unwind.is_some()),
        "kernel frames and a user stack copy: {:?}",
        stacks
            .iter()
            .map(|s| (
                s.source,
                s.kernel.len(),
                s.user.len(),
                s.unwind.as_ref().map(|u| u.stack.len())
            ))
            .collect::<Vec<_>>()
    );
    let theirs = waits(&events, waiter_tid);
    assert_eq!(
        theirs[0].off_ns, 0,
        "off since before its heating: {theirs:?}"
    );
    // Its stack, recorded as its futex(2) returned, stamped with its switch-in.
    assert!(
        stacks
            .iter()
            .any(|s| s.tid == waiter_tid && s.ts_ns == theirs[0].on_ns && s.unwind.is_some()),
        "the waiter's stack as it returned"
    );

    sampler.apply(&mut probes.ebpf, ProfileCommand::Cool { tid });
    sampler.apply(&mut probes.ebpf, ProfileCommand::Cool { tid: waiter_tid });
    let _ = collect_until(&mut probes, Duration::from_millis(200), |_| false);
    std::thread::sleep(Duration::from_millis(50));
    let cold = collect_until(&mut probes, Duration::from_millis(300), |_| false);
    assert!(
        waits(&cold, tid).is_empty(),
        "a cooled thread is not watched: {:?}",
        waits(&cold, tid)
    );
    // With nothing hot the programs go, a second later.
    assert!(sampler.watching_off_cpu());
    std::thread::sleep(Duration::from_millis(1100));
    sampler.settle(&mut probes.ebpf);
    assert!(
        !sampler.watching_off_cpu(),
        "nothing is paid while nothing is slow"
    );
}
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn vector_writes_and_reads_are_captured_across_their_iovecs() {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let (server_fd, client_fd) = (server.as_raw_fd(), client.as_raw_fd());

    // Five messages, five iovecs, one of them empty.
    let parts: [&[u8]; 6] = [
        b"P-parse|",
        b"B-bind|",
        b"",
        b"D-describe|",
        b"E-execute|",
        b"S|",
    ];
    let vec = iovecs(&parts);
    // SAFETY: the iovecs point at live buffers for the duration of the call.
    let written = unsafe { libc::writev(client_fd, vec.as_ptr(), vec.len() as i32) };
    let whole: Vec<u8> = parts.concat();
    assert_eq!(written as usize, whole.len());

    // Read it back with readv into three buffers, the first too small for the first message.
    let (mut a, mut b, mut c) = ([0u8; 5], [0u8; 20], [0u8; 64]);
    let mut into = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        },
        libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: c.len(),
        },
    ];
    let mut read = 0usize;
    while read < whole.len() {
        // SAFETY: as above; the buffers outlive the call.
        let n = unsafe { libc::readv(server_fd, into.as_mut_ptr(), into.len() as i32) };
        assert!(n > 0);
        read += n as usize;
        into[0].iov_len = 0;
    }

    // sendmsg with two iovecs longer than the capture: the capture stops at 256 bytes.
    let long = vec![b'x'; 300];
    let head: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
    let mut msg_vec = iovecs(&[head, &long]);
    // SAFETY: zeroed msghdr is valid; fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = msg_vec.as_mut_ptr();
    msg.msg_iovlen = msg_vec.len();
    // SAFETY: as above.
    let sent = unsafe { libc::sendmsg(server_fd, &msg, 0) };
    assert_eq!(sent as usize, head.len() + long.len());

    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        !data_on(events, client_fd, Direction::Egress).is_empty()
            && !data_on(events, server_fd, Direction::Ingress).is_empty()
            && !data_on(events, server_fd, Direction::Egress).is_empty()
    });
    let out = data_on(&events, client_fd, Direction::Egress);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].payload[..], &whole[..], "every iovec in order");
    assert_eq!(out[0].total_len as usize, whole.len());

    let got: Vec<u8> = data_on(&events, server_fd, Direction::Ingress)
        .iter()
        .flat_map(|d| d.payload.iter().copied())
        .collect();
    assert_eq!(got, whole, "a readv's bytes land in its iovecs in order");

    let reply = data_on(&events, server_fd, Direction::Egress);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].total_len as usize, head.len() + long.len());
    assert_eq!(
        reply[0].payload.len(),
        256,
        "up to the capture, across iovecs"
    );
    assert_eq!(&reply[0].payload[..head.len()], head);
    assert!(reply[0].payload[head.len()..].iter().all(|&b| b == b'x'));
}

/// The client-side connection the kernel reported for `fd` of `pid`.
fn connected_on(events: &[Event], pid: u32, fd: i32) -> Option<u64> {
    events.iter().find_map(|e| match e {
        Event::Conn(c) if c.pid == pid && c.fd == fd && c.role == SocketRole::Client => {
            Some(c.conn_id)
        }
        _ => None,
    })
}

/// A socket this process connects to `listener`: its fd (the caller's to close), the accepted
/// end, and the connection the kernel says it is once its connect was seen.
fn tracked_connection(probes: &mut Probes, listener: &TcpListener) -> (i32, TcpStream, u64) {
    use std::os::fd::IntoRawFd;
    let me = std::process::id();
    let fd = TcpStream::connect(listener.local_addr().unwrap())
        .unwrap()
        .into_raw_fd();
    let (server, _) = listener.accept().unwrap();
    let events = collect_until(probes, Duration::from_secs(5), |events| {
        connected_on(events, me, fd).is_some()
    });
    let conn_id = connected_on(&events, me, fd).expect("connect seen");
    (fd, server, conn_id)
}

fn closed(events: &[Event], fd: i32, conn_id: u64) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Close { fd: f, conn_id: c, .. } if *f == fd && *c == conn_id))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_socket_closed_by_close_range_is_forgotten_and_its_reused_fd_is_not_its_connection() {
    use std::os::unix::net::UnixStream;

    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(256);
    let me = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (fd, _server, old) = tracked_connection(&mut probes, &listener);

    // SAFETY: `fd` is this test's own (into_raw_fd), closed once, here.
    assert_eq!(unsafe { libc::close_range(fd as u32, fd as u32, 0) }, 0);
    // The freed fd reused by a socket that is neither accepted nor connected (untracked)...
    let (unix, _peer) = UnixStream::pair().unwrap();
    // SAFETY: dup2 onto a free fd number; the unix socket outlives the write below.
    assert_eq!(unsafe { libc::dup2(unix.as_raw_fd(), fd) }, fd);
    // SAFETY: the buffer is live for the call.
    assert_eq!(unsafe { libc::write(fd, b"stale".as_ptr().cast(), 5) }, 5);
    // ...then by a new connection (dup2 of a connected socket onto it).
    let fresh = TcpStream::connect(addr).unwrap();
    let _fresh_server = listener.accept().unwrap();
    // SAFETY: as above; `fresh` stays open, dup2 replaces the unix socket at `fd`.
    assert_eq!(unsafe { libc::dup2(fresh.as_raw_fd(), fd) }, fd);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::write(fd, b"fresh".as_ptr().cast(), 5) }, 5);

    // "fresh" is written after "stale", by this thread: once it is in, both are.
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        data_on(events, fd, Direction::Egress)
            .iter()
            .any(|d| &d.payload[..] == b"fresh")
    });
    assert!(
        closed(&events, fd, old),
        "close_range reports the tracked socket's close"
    );
    let writes = data_on(&events, fd, Direction::Egress);
    assert!(
        writes.iter().all(|d| d.conn_id != old),
        "nothing written on the reused fd is the old connection's: {writes:?}"
    );
    assert!(
        !writes.iter().any(|d| &d.payload[..] == b"stale"),
        "the untracked socket on the reused fd is not traced"
    );
    let fresh_conn = connected_on(&events, me, fresh.as_raw_fd()).expect("new connect seen");
    assert!(
        writes
            .iter()
            .any(|d| &d.payload[..] == b"fresh" && d.conn_id == fresh_conn),
        "the new socket on the fd is the new connection"
    );
    // SAFETY: `fd` (the dup of `fresh`) is this test's own.
    unsafe { libc::close(fd) };
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_socket_replaced_by_dup2_is_closed_and_its_fd_is_not_its_connection() {
    use std::os::unix::net::UnixStream;

    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (first, _first_server, first_conn) = tracked_connection(&mut probes, &listener);
    let (second, _second_server, second_conn) = tracked_connection(&mut probes, &listener);

    // An untracked socket put over a tracked one: dup2 closes the tracked one.
    let (unix, _peer) = UnixStream::pair().unwrap();
    // SAFETY: `first` is this test's own fd; dup2 replaces it with the unix socket.
    assert_eq!(unsafe { libc::dup2(unix.as_raw_fd(), first) }, first);
    // SAFETY: the buffer is live for the call.
    let wrote = unsafe { libc::write(first, b"stale".as_ptr().cast(), 5) };
    assert_eq!(wrote, 5);
    // A tracked socket put over another (dup3): the one replaced is closed, the fd is the copy's.
    // SAFETY: `second` and `first` are this test's own fds.
    assert_eq!(unsafe { libc::dup3(second, first, libc::O_CLOEXEC) }, first);
    // SAFETY: the buffer is live for the call.
    let wrote = unsafe { libc::write(first, b"fresh".as_ptr().cast(), 5) };
    assert_eq!(wrote, 5);

    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        data_on(events, first, Direction::Egress)
            .iter()
            .any(|d| &d.payload[..] == b"fresh")
    });
    assert!(
        closed(&events, first, first_conn),
        "dup2 over a tracked socket reports its close"
    );
    let writes = data_on(&events, first, Direction::Egress);
    assert!(
        !writes.iter().any(|d| &d.payload[..] == b"stale"),
        "the untracked socket dup2 put on the fd is not traced: {writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|d| d.conn_id == second_conn && &d.payload[..] == b"fresh"),
        "after dup3, the fd is the second connection's: {writes:?}"
    );
    assert!(
        !closed(&events, second, second_conn),
        "the socket dup3 copied stays open"
    );
    // SAFETY: both fds are this test's own, closed once, here.
    unsafe {
        libc::close(first);
        libc::close(second);
    }
}

/// What the upkeep counts as let go of, as of now.
fn evicted_now(audit: &mut EvictionAudit, probes: &Probes) -> u64 {
    audit.update(
        &probes.sockets,
        &LossCounters::read(&probes.loss),
        &probes.loss,
    )
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sockets_the_full_socket_map_let_go_of_are_counted() {
    const MAP: u32 = 128;
    const PAIRS: usize = 150;

    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach_with(std::process::id(), 256, MAP);
    let mut audit = EvictionAudit::new(MAP);
    assert_eq!(evicted_now(&mut audit, &probes), 0, "nothing let go of yet");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Each pair is two tracked sockets of this process: the connected one and the accepted one.
    let pairs: Vec<(TcpStream, TcpStream)> = (0..PAIRS)
        .map(|_| {
            let client = TcpStream::connect(addr).unwrap();
            (client, listener.accept().unwrap().0)
        })
        .collect();
    let last = pairs.last().unwrap().0.as_raw_fd();
    let me = std::process::id();
    collect_until(&mut probes, Duration::from_secs(5), |events| {
        connected_on(events, me, last).is_some()
    });
    let present = probes.sockets.keys().count();
    assert!(
        present <= MAP as usize,
        "{present} sockets in a map of {MAP}"
    );
    let tracked = 2 * PAIRS;
    let evicted = evicted_now(&mut audit, &probes);
    assert_eq!(
        evicted as usize,
        tracked - present,
        "every socket not in the map was let go of ({present} there)"
    );
    // Closing them all takes out the ones still there; the count stays.
    drop(pairs);
    let deadline = Instant::now() + Duration::from_secs(5);
    while probes.sockets.keys().count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(probes.sockets.keys().count(), 0, "closes took out the rest");
    assert_eq!(evicted_now(&mut audit, &probes), evicted);
}

/// Connects two sockets to the port in argv[1] ("keep", made inheritable, then "gone", left
/// close-on-exec as Python makes them), then execs Python again with the program in argv[2].
const BEFORE_EXEC: &str = "import os, socket, sys
port = int(sys.argv[1])
keep = socket.create_connection(('127.0.0.1', port))
keep.sendall(b'keep\\n')
gone = socket.create_connection(('127.0.0.1', port))
gone.sendall(b'gone\\n')
keep.set_inheritable(True)
os.execv(sys.executable, [sys.executable, '-c', sys.argv[2], str(keep.fileno()), str(gone.fileno())])
";

/// After the exec: waits for "go" on the kept socket, reuses the closed socket's fd for
/// /dev/null and writes to it, then answers "after" on the kept socket.
const AFTER_EXEC: &str = "import os, sys
keep, gone = int(sys.argv[1]), int(sys.argv[2])
assert os.read(keep, 3) == b'go\\n'
null = os.open('/dev/null', os.O_WRONLY)
if null != gone:
    os.dup2(null, gone)
os.write(gone, b'stale')
os.write(keep, b'after\\n')
";

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_exec_forgets_its_close_on_exec_sockets_and_keeps_the_others() {
    use std::io::{BufRead, BufReader};

    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut probes = attach(256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Started after attach: a forked child of the target, so a target too.
    let mut child = std::process::Command::new("python3")
        .args(["-c", BEFORE_EXEC, &port, AFTER_EXEC])
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut accepted = std::collections::HashMap::new();
    for _ in 0..2 {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        accepted.insert(line.trim().to_owned(), stream);
    }
    let parked = |news: &[FdNews]| -> Vec<(i32, u64)> {
        news.iter()
            .filter_map(|n| match *n {
                FdNews::Parked {
                    pid: p,
                    fd,
                    conn_id,
                    ..
                } if p == pid => Some((fd, conn_id)),
                _ => None,
            })
            .collect()
    };
    let (events, news) = collect_with_news(&mut probes, Duration::from_secs(10), |_, news| {
        parked(news).len() == 2
    });
    let set_aside = parked(&news);
    assert_eq!(
        set_aside.len(),
        2,
        "both sockets set aside at exec: {news:?}"
    );
    let conn_of = |fd: i32| connected_on(&events, pid, fd).expect("the child's connect seen");
    let writes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Data(d) if d.pid == pid && d.direction == Direction::Egress => Some(d),
            _ => None,
        })
        .collect();
    let fd_of = |payload: &[u8]| {
        writes
            .iter()
            .find(|d| &d.payload[..] == payload)
            .map(|d| d.fd)
            .expect("the child's write seen")
    };
    let (keep_fd, gone_fd) = (fd_of(b"keep\n"), fd_of(b"gone\n"));
    let (keep_conn, gone_conn) = (conn_of(keep_fd), conn_of(gone_fd));
    assert!(set_aside.contains(&(keep_fd, keep_conn)) && set_aside.contains(&(gone_fd, gone_conn)));

    // What the agent's re-sync thread does with the news.
    let mut closes = Vec::new();
    for item in news.iter().filter(
        |n| matches!(n, FdNews::Parked { pid: p, .. } | FdNews::Resync { pid: p, .. } if *p == pid),
    ) {
        probes.resync.handle(*item, 0, &mut closes);
    }
    assert!(
        closed(&closes, gone_fd, gone_conn),
        "the close-on-exec socket is closed: {closes:?}"
    );
    assert!(
        !closes
            .iter()
            .any(|e| matches!(e, Event::Close { conn_id, .. } if *conn_id == keep_conn)),
        "the inherited socket stays open"
    );

    accepted
        .get_mut("keep")
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut answer = [0u8; 6];
    accepted
        .get_mut("keep")
        .unwrap()
        .read_exact(&mut answer)
        .unwrap();
    assert_eq!(&answer, b"after\n");
    assert!(child.wait().unwrap().success());
    // "after" is written after "stale", by the same thread: once it is in, both are.
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        events
            .iter()
            .any(|e| matches!(e, Event::Data(d) if d.pid == pid && &d.payload[..] == b"after\n"))
    });
    let after: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Data(d) if d.pid == pid && d.direction == Direction::Egress => Some(d),
            _ => None,
        })
        .collect();
    assert!(
        after
            .iter()
            .any(|d| &d.payload[..] == b"after\n" && d.fd == keep_fd && d.conn_id == keep_conn),
        "the inherited socket is traced again as the same connection: {after:?}"
    );
    assert!(
        !after.iter().any(|d| d.conn_id == gone_conn),
        "nothing on the closed socket's reused fd is its connection's: {after:?}"
    );
}

/// A thread-per-connection server: each connection echoes lines on a thread of its own; the
/// line `fork` makes that thread fork a child that sends its pid and lives until its connection
/// closes.
const THREADED_SERVER: &str = r#"
import os, socket, sys, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1024)
print(srv.getsockname()[1], flush=True)
def serve(conn):
    while True:
        line = conn.recv(100)
        if not line:
            return
        if line == b"fork\n":
            if os.fork() == 0:
                conn.sendall(b"%d\n" % os.getpid())
                conn.recv(1)
                os._exit(0)
            return
        conn.sendall(line)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Kills the child it holds when dropped, so a failed assertion leaves no server behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Threads of `pid`, from /proc.
fn thread_ids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn threads_of_a_target_are_not_targets_and_a_forked_child_is() {
    use std::io::{BufRead, BufReader};

    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = KillOnDrop(
        std::process::Command::new("python3")
            .args(["-c", THREADED_SERVER])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let addr = format!("127.0.0.1:{}", port.trim());
    let mut probes = attach_to(pid, 64);

    // 500 connections held open, each served by a thread started after attach.
    const CONNECTIONS: usize = 500;
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for client in &mut clients {
        client.write_all(b"ping\n").unwrap();
    }
    for client in &mut clients {
        let mut echo = [0u8; 5];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping\n");
    }
    let threads = thread_ids(pid);
    assert!(threads.len() > CONNECTIONS, "{} threads", threads.len());

    // One of those threads forks a real child process.
    let mut forker = TcpStream::connect(&addr).unwrap();
    forker.write_all(b"fork\n").unwrap();
    let mut line = String::new();
    BufReader::new(forker.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    assert_ne!(child, pid);
    // The child lives until `forker` closes (dropped on a failed assertion too).
    let forks = |events: &[Event]| -> Vec<(u32, u32)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Fork { parent, child } => Some((*parent, *child)),
                _ => None,
            })
            .collect()
    };
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        forks(events).iter().any(|&(_, c)| c == child)
    });
    assert_eq!(forks(&events), [(pid, child)], "one fork, no thread");
    let mut targets: Vec<u32> = probes.targets.keys().flatten().collect();
    targets.sort_unstable();
    let mut expected = vec![pid, child];
    expected.sort_unstable();
    assert_eq!(
        targets,
        expected,
        "the server and its child, none of its {} threads",
        threads.len()
    );

    drop(forker);
    drop(clients);
}

/// A copy of sleep(1) named `name` in `dir`: its exec gives the process that name.
fn sleeper(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sleep", &path).unwrap();
    path
}

fn execs(events: &[Event]) -> Vec<&loupe::events::ExecRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect()
}

/// Loads the programs with no target and `watch`.
fn attach_watching(watch: ExecWatch) -> Probes {
    preflight::check(&[]).expect("preflight");
    let config = ProbeConfig {
        capture_bytes: 256,
        query_bytes: 2048,
        wakeup_bytes: 1,
        watch,
        max_sockets: loupe_common::SOCKETS_MAX,
        off_cpu_gap_ns: 1_001_001,
    };
    load_and_attach(&config, &[]).expect("load and attach")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_exec_of_a_watched_name_is_a_target_at_once_and_other_execs_are_reported() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let dir = std::env::temp_dir().join(format!("loupe-watch-{me}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Short and unique: a comm holds 15 bytes.
    let (watched, other) = (format!("lpw{me}"), format!("lpo{me}"));
    let (watched_bin, other_bin) = (sleeper(&dir, &watched), sleeper(&dir, &other));

    let mut probes = attach_watching(ExecWatch {
        comms: vec![loupe_common::comm_key(watched.as_bytes())],
        every_exec: true,
    });
    // This process is no target: its children exec as processes loupe does not know yet.
    let target = KillOnDrop(
        std::process::Command::new(&watched_bin)
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let bystander = KillOnDrop(
        std::process::Command::new(&other_bin)
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let (target_pid, bystander_pid) = (target.0.id(), bystander.0.id());
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        let seen = execs(events);
        [target_pid, bystander_pid]
            .iter()
            .all(|pid| seen.iter().any(|exec| exec.pid == *pid))
    });
    let seen = execs(&events);
    let of = |pid: u32| {
        seen.iter()
            .find(|exec| exec.pid == pid)
            .unwrap_or_else(|| panic!("the exec of {pid} is reported: {seen:?}"))
    };
    assert_eq!(of(target_pid).comm, watched);
    assert!(of(target_pid).adopted, "the kernel matched its name");
    assert_eq!(of(bystander_pid).comm, other);
    assert!(
        !of(bystander_pid).adopted,
        "reported for userspace to match its executable, not made a target"
    );
    let info = probes
        .targets
        .get(&target_pid, 0)
        .expect("the watched name is a target from its exec on");
    assert_eq!(info.root_pid, target_pid, "its own root");
    assert!(probes.targets.get(&bystander_pid, 0).is_err());
    drop(probes);

    // Watching names only: the kernel reports the execs it adopted, no others.
    let mut probes = attach_watching(ExecWatch {
        comms: vec![loupe_common::comm_key(watched.as_bytes())],
        every_exec: false,
    });
    let bystander = KillOnDrop(
        std::process::Command::new(&other_bin)
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let target = KillOnDrop(
        std::process::Command::new(&watched_bin)
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let events = collect_until(&mut probes, Duration::from_secs(5), |events| {
        execs(events).iter().any(|exec| exec.pid == target.0.id())
    });
    let pids: Vec<u32> = execs(&events).iter().map(|exec| exec.pid).collect();
    assert_eq!(pids, [target.0.id()], "only the adopted exec: {pids:?}");
    drop((target, bystander));
    let _ = std::fs::remove_dir_all(&dir);
}
