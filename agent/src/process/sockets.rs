//! Sockets a target already had open when loupe attached (keep-alive connections, pools): the
//! kernel side only learns of sockets at accept/connect, so userspace seeds it from /proc.

use std::{collections::HashSet, net::SocketAddr};

use loupe_common::SocketRole;
use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

/// An established TCP socket found open in a target.
#[derive(Clone, Debug)]
pub struct ExistingSocket {
    pub fd: i32,
    /// The socket's inode: the same for every fd that duplicates it.
    pub inode: u64,
    pub role: SocketRole,
    pub addrs: SocketAddrs,
}

impl ExistingSocket {
    /// The connection id userspace gives a socket found at attach: its inode, marked so it
    /// never collides with the kernel's ids.
    pub fn conn_id(&self) -> u64 {
        self.inode | loupe_common::USER_CONN_ID_BIT
    }
}

/// Both ends of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAddrs {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Established TCP sockets of `pid`. The role is Server when the local port is one the process
/// listens on, else Client.
pub fn existing_sockets(pid: u32) -> Vec<ExistingSocket> {
    let Ok(process) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let mut table = process.tcp().unwrap_or_default();
    table.extend(process.tcp6().unwrap_or_default());
    let listening: HashSet<u16> = table
        .iter()
        .filter(|entry| entry.state == TcpState::Listen)
        .map(|entry| entry.local_address.port())
        .collect();
    let Ok(fds) = process.fd() else {
        return Vec::new();
    };
    let mut sockets = Vec::new();
    for fd in fds.flatten() {
        let FDTarget::Socket(inode) = fd.target else {
            continue;
        };
        let Some(entry) = table.iter().find(|entry| entry.inode == inode) else {
            continue;
        };
        if entry.state != TcpState::Established {
            continue;
        }
        let role = if listening.contains(&entry.local_address.port()) {
            SocketRole::Server
        } else {
            SocketRole::Client
        };
        sockets.push(ExistingSocket {
            fd: fd.fd,
            inode,
            role,
            addrs: SocketAddrs {
                local: entry.local_address,
                peer: entry.remote_address,
            },
        });
    }
    sockets
}

/// Both addresses of socket `fd` of `pid`, looked up by its inode in the process's TCP tables.
/// Used once per connection, when the kernel could not give the peer address.
pub fn socket_addrs(pid: u32, fd: i32) -> Option<SocketAddrs> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode: u64 = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let process = Process::new(pid as i32).ok()?;
    let find = |table: Vec<procfs::net::TcpNetEntry>| {
        table
            .into_iter()
            .find(|entry| entry.inode == inode)
            .map(|entry| SocketAddrs {
                local: entry.local_address,
                peer: entry.remote_address,
            })
    };
    find(process.tcp().ok()?).or_else(|| find(process.tcp6().ok()?))
}

/// The database of the PostgreSQL session whose client end is `client`, read from the title
/// its server process shows (`postgres: <user> <database> <host>(<port>) <activity>`), when that
/// server runs on this host with its default `update_process_title`. One pass over /proc.
pub fn local_postgres_database(client: SocketAddr) -> Option<String> {
    let peer = format!("{}({})", client.ip(), client.port());
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name();
            if !name.to_str()?.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            backend_database(&String::from_utf8_lossy(&cmdline), &peer)
        })
}

/// The database in a PostgreSQL backend's title, if the title is that of the session with the
/// client `peer` (`127.0.0.1(54321)`).
fn backend_database(title: &str, peer: &str) -> Option<String> {
    let mut words = title
        .strip_prefix("postgres: ")?
        .split(|c: char| c.is_whitespace() || c == '\0');
    let (_user, database, host) = (words.next()?, words.next()?, words.next()?);
    (host == peer && !database.is_empty()).then(|| database.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    #[test]
    fn a_backend_title_names_the_database_of_its_client() {
        let title = "postgres: app shop 127.0.0.1(54321) idle\0\0\0";
        assert_eq!(
            backend_database(title, "127.0.0.1(54321)").as_deref(),
            Some("shop")
        );
        assert_eq!(backend_database(title, "127.0.0.1(54322)"), None);
        assert_eq!(
            backend_database("postgres: checkpointer ", "127.0.0.1(1)"),
            None
        );
        assert_eq!(
            backend_database("/usr/bin/python app.py", "127.0.0.1(54321)"),
            None
        );
    }

    #[test]
    fn open_connections_of_this_process_are_found_with_roles() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).unwrap();

        let sockets = existing_sockets(std::process::id());
        let role_of = |fd: i32| sockets.iter().find(|s| s.fd == fd).map(|s| s.role);
        assert_eq!(role_of(server.as_raw_fd()), Some(SocketRole::Server));
        assert_eq!(role_of(client.as_raw_fd()), Some(SocketRole::Client));
        assert_eq!(
            role_of(listener.as_raw_fd()),
            None,
            "listeners are not connections"
        );

        let addrs = socket_addrs(std::process::id(), client.as_raw_fd()).unwrap();
        assert_eq!(addrs.peer, addr);
        assert_eq!(addrs.local, client.local_addr().unwrap());
    }
}
