//! Uprobes on OpenSSL's record functions (`SSL_read`, `SSL_write`, `SSL_read_ex`,
//! `SSL_write_ex`): the plaintext an application reads and writes through TLS. Entry saves the
//! buffer; the socket syscall the same thread makes inside the call says which connection it is
//! (and is not reported: ciphertext); return reports the plaintext moved as a
//! [`crate::EventKind::TlsData`] record, laid out as a [`crate::DataEvent`].

/// A probed OpenSSL function; its id is the attach cookie.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFunction {
    /// `int SSL_read(SSL *ssl, void *buf, int num)`: returns the bytes read.
    Read = 1,
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`: returns the bytes written.
    Write = 2,
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`: returns 1 on
    /// success, the count in `*readbytes`.
    ReadEx = 3,
    /// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
    WriteEx = 4,
}

impl TlsFunction {
    pub const fn is_read(self) -> bool {
        matches!(self, Self::Read | Self::ReadEx)
    }

    pub const fn is_ex(self) -> bool {
        matches!(self, Self::ReadEx | Self::WriteEx)
    }
}

impl TryFrom<u32> for TlsFunction {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            1 => Ok(Self::Read),
            2 => Ok(Self::Write),
            3 => Ok(Self::ReadEx),
            4 => Ok(Self::WriteEx),
            other => Err(other),
        }
    }
}

/// Symbol names and the function each is.
pub const TLS_PROBES: &[(&str, TlsFunction)] = &[
    ("SSL_read", TlsFunction::Read),
    ("SSL_write", TlsFunction::Write),
    ("SSL_read_ex", TlsFunction::ReadEx),
    ("SSL_write_ex", TlsFunction::WriteEx),
];
