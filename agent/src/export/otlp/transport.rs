//! One OTLP request on the wire: gRPC (tonic) or HTTP with a protobuf body (reqwest), with the
//! configured headers, compression, timeout and CA certificate. Says whether a failure is worth
//! a retry, the way the OTLP specification sorts them.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    config::OtlpProtocol,
    export::settings::{Compression, ExportSettings},
};

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid OTLP endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("failed to read the CA certificate {path}")]
    Certificate {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid OTLP header `{0}`")]
    Header(String),
    #[error("failed to set up the OTLP/HTTP client: {0}")]
    Client(String),
}

/// A request that did not go through.
#[derive(Debug)]
pub struct SendError {
    /// The collector may take it later (unavailable, overloaded, timed out).
    pub retryable: bool,
    pub message: String,
}

/// What the collector said to a request it took.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans it refused (OTLP partial success).
    pub rejected: u64,
}

/// What a transport carries: its gRPC method, and how an OTLP/HTTP endpoint becomes its URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    /// The endpoint given is the full metrics URL for OTLP/HTTP (the configuration derives it).
    Metrics,
}

impl Signal {
    fn grpc_path(self) -> &'static str {
        match self {
            Self::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

/// A configured OTLP transport. Cheap to clone: clones share connections. Requests are encoded
/// once, by the caller: a retry sends the same bytes again.
#[derive(Clone)]
pub enum Transport {
    Grpc {
        endpoint: Box<Endpoint>,
        /// Set by [`Transport::connect`], on the runtime that will drive it.
        channel: Option<Channel>,
        gzip: bool,
        metadata: MetadataMap,
        timeout: Duration,
        path: &'static str,
    },
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
        timeout: Duration,
    },
}

impl Transport {
    /// Sets up `endpoint` (a URL: gRPC's base, or HTTP's base or full traces URL, or the full
    /// metrics URL). Connects lazily: an unreachable collector is found by the first request,
    /// not here.
    pub fn new(
        endpoint: &str,
        protocol: OtlpProtocol,
        settings: &ExportSettings,
        signal: Signal,
    ) -> Result<Self, TransportError> {
        let certificate = match &settings.certificate {
            Some(path) => {
                Some(
                    std::fs::read(path).map_err(|source| TransportError::Certificate {
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let https = endpoint.starts_with("https://");
        // rustls's cryptography: ring, the one tonic's TLS uses too. Installed once per process
        // (a second install is refused, and harmless).
        let _ = rustls::crypto::ring::default_provider().install_default();
        match protocol {
            OtlpProtocol::Grpc => {
                let invalid = |reason: String| TransportError::Endpoint {
                    endpoint: endpoint.to_owned(),
                    reason,
                };
                let mut channel = Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|err| invalid(err.to_string()))?
                    .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
                    .timeout(settings.timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true);
                if https {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = certificate {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    channel = channel
                        .tls_config(tls)
                        .map_err(|err| invalid(err.to_string()))?;
                }
                let mut metadata = MetadataMap::new();
                for (key, value) in &settings.headers {
                    let name = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    let value = MetadataValue::try_from(value.as_str())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    metadata.insert(name, value);
                }
                Ok(Self::Grpc {
                    endpoint: Box::new(channel),
                    channel: None,
                    gzip: settings.compression == Compression::Gzip,
                    metadata,
                    timeout: settings.timeout,
                    path: signal.grpc_path(),
                })
            }
            OtlpProtocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (key, value) in &settings.headers {
                    let name = reqwest::header::HeaderName::from_bytes(key.as_bytes())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    let mut value = reqwest::header::HeaderValue::from_str(value)
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                let mut builder = reqwest::Client::builder()
                    .default_headers(headers)
                    .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true)
                    .no_proxy();
                if https {
                    builder = builder.tls_backend_rustls();
                    if let Some(pem) = certificate {
                        let certificate = reqwest::Certificate::from_pem(&pem)
                            .map_err(|err| TransportError::Client(err.to_string()))?;
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                let client = builder
                    .build()
                    .map_err(|err| TransportError::Client(err.to_string()))?;
                Ok(Self::Http {
                    client,
                    url: match signal {
                        Signal::Traces => traces_url(endpoint),
                        Signal::Metrics => endpoint.to_owned(),
                    },
                    gzip: settings.compression == Compression::Gzip,
                    timeout: settings.timeout,
                })
            }
        }
    }

    /// Readies the transport on the current runtime (gRPC's connection task lives there).
    /// Connects lazily: nothing is dialled until the first request.
    pub fn connect(&mut self) {
        if let Self::Grpc {
            endpoint, channel, ..
        } = self
        {
            *channel = Some(endpoint.connect_lazy());
        }
    }

    /// Sends one encoded export request of its signal; bounded by the timeout whatever the
    /// collector does. (The traces and metrics responses have the same wire form: a partial
    /// success whose field 1 is the count refused, spans or data points.)
    pub async fn send(&self, request: Bytes) -> Result<Accepted, SendError> {
        let timeout = match self {
            Self::Grpc { timeout, .. } | Self::Http { timeout, .. } => *timeout,
        };
        match tokio::time::timeout(timeout, self.send_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(SendError {
                retryable: true,
                message: format!("no answer within {}", humantime::format_duration(timeout)),
            }),
        }
    }

    async fn send_unbounded(&self, request: Bytes) -> Result<Accepted, SendError> {
        match self {
            Self::Grpc {
                endpoint,
                channel,
                gzip,
                metadata,
                timeout,
                path,
            } => {
                let channel = channel.clone().unwrap_or_else(|| endpoint.connect_lazy());
                let mut grpc =
                    tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
                if *gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc.ready().await.map_err(|err| SendError {
                    retryable: true,
                    message: innermost(&err),
                })?;
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = PathAndQuery::from_static(path);
                match grpc.unary(request, path, BytesCodec).await {
                    Ok(response) => Ok(Accepted {
                        rejected: response
                            .into_inner()
                            .partial_success
                            .map_or(0, |partial| partial.rejected_spans.max(0) as u64),
                    }),
                    Err(status) => Err(SendError {
                        retryable: grpc_retryable(status.code()),
                        message: grpc_message(&status),
                    }),
                }
            }
            Self::Http {
                client,
                url,
                gzip,
                timeout,
            } => {
                let body = request;
                let mut post = client
                    .post(url)
                    .timeout(*timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if *gzip {
                    post = post.header(reqwest::header::CONTENT_ENCODING, "gzip");
                    Bytes::from(gzip_bytes(&body))
                } else {
                    body
                };
                let response = post.body(body).send().await.map_err(|err| SendError {
                    retryable: true,
                    message: innermost(&err),
                })?;
                let status = response.status();
                if status.is_success() {
                    let bytes = response.bytes().await.unwrap_or_default();
                    let rejected = ExportTraceServiceResponse::decode(bytes)
                        .ok()
                        .and_then(|answer| answer.partial_success)
                        .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                    return Ok(Accepted { rejected });
                }
                Err(SendError {
                    retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    message: format!("HTTP {status}"),
                })
            }
        }
    }
}

/// Sends pre-encoded requests and decodes OTLP responses.
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|err| tonic::Status::internal(err.to_string()))
    }
}

/// The codes OTLP/gRPC says to retry.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A gRPC failure in one line: the code and the innermost cause (e.g. "connection refused").
fn grpc_message(status: &tonic::Status) -> String {
    let detail =
        std::error::Error::source(status).map_or_else(|| status.message().to_owned(), innermost);
    format!("{:?}: {}", status.code(), detail)
}

/// The innermost cause of an error chain (e.g. "Connection refused (os error 111)").
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text = inner.to_string();
        cause = inner.source();
    }
    text
}

fn gzip_bytes(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// The OTLP/HTTP traces URL for a base endpoint (`http://h:4318` -> `http://h:4318/v1/traces`);
/// an endpoint that already names a path is used as given.
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// `host:port` of an endpoint URL, for the reachability check at start.
pub fn host_port(endpoint: &str) -> Option<String> {
    let after_scheme = endpoint.split_once("://")?.1;
    let authority = after_scheme.split('/').next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        Some(authority.to_owned())
    } else if endpoint.starts_with("https://") {
        Some(format!("{authority}:443"))
    } else {
        Some(format!("{authority}:80"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            traces_url("http://h:4318/v1/traces"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(traces_url("https://h/custom"), "https://h/custom");
    }

    #[test]
    fn host_and_port_of_endpoints() {
        assert_eq!(
            host_port("http://localhost:4317").as_deref(),
            Some("localhost:4317")
        );
        assert_eq!(
            host_port("https://collector/v1/traces").as_deref(),
            Some("collector:443")
        );
        assert_eq!(
            host_port("http://[::1]:4318/").as_deref(),
            Some("[::1]:4318")
        );
        assert_eq!(host_port("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(host_port("nonsense"), None);
    }

    #[test]
    fn the_spec_sorts_grpc_failures() {
        assert!(grpc_retryable(tonic::Code::Unavailable));
        assert!(grpc_retryable(tonic::Code::DeadlineExceeded));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated));
        assert!(!grpc_retryable(tonic::Code::InvalidArgument));
    }

    #[test]
    fn gzip_bodies_decompress_to_the_request() {
        use std::io::Read as _;
        let body = b"spans spans spans spans".repeat(100);
        let packed = gzip_bytes(&body);
        assert!(packed.len() < body.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, body);
    }
}
