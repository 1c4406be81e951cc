//! Mutual TLS between RiteRaft nodes and clients: reading certificates and keys, the name a
//! certificate gives its holder (a node's address or a client's role), the rustls client
//! configuration (reloadable), and the connector tonic dials through.
//!
//! Who a certificate names is written in its URI subject alternative names, and nowhere else:
//! - a node: `riteraft://node/HOST:PORT` (its address), next to an IP or DNS name for HOST so that
//!   ordinary server-name checks work too;
//! - a client: `riteraft://client/ROLE`, ROLE being `read`, `write` or `admin`; the common name is
//!   the client's name, for logs.
//!
//! Everything here uses the ring crypto provider explicitly ([`crypto_provider`]) rather than a
//! process-wide default, so that linking another rustls provider somewhere else in a program
//! cannot change what RiteRaft uses or make it panic.

use std::error::Error as StdError;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use x509_parser::extensions::GeneralName;

/// The scheme of the identity URIs: any URI SAN with it is a RiteRaft identity.
const SCHEME: &str = "riteraft://";
/// The prefix of a node's identity URI; the node's `HOST:PORT` follows.
const NODE_PREFIX: &str = "riteraft://node/";
/// The prefix of a client's identity URI; its role follows.
const CLIENT_PREFIX: &str = "riteraft://client/";

/// Largest certificate, key or CA file read: 1 MiB. A chain of a few certificates is a few KiB
/// and even a bundle of every public root CA is about 200 KiB, so anything bigger is the wrong
/// file (a log, a binary) and reading it whole would only waste memory.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// What a client may do, by the role its certificate names. Ordered: each role may do what the
/// ones before it may (`Read < Write < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Queries and status.
    Read,
    /// Reads and proposals.
    Write,
    /// Everything, membership and deploys included.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    /// The role as certificates and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `read`, `write`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected read, write or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

/// Who a certificate says its holder is (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    /// A node of the cluster, serving at `address` (`HOST:PORT`, as in its URI).
    Node {
        /// The node's address.
        address: String,
    },
    /// A client, with the role it was given.
    Client {
        /// The certificate's common name, or its identity URI if it has none.
        name: String,
        /// What the client may do.
        role: Role,
    },
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Node { address } => write!(f, "node {address}"),
            CertName::Client { name, role } => write!(f, "client {name:?} (role {role})"),
        }
    }
}

/// The identity URI of the node serving at `address` (`HOST:PORT`).
pub fn node_uri(address: &str) -> String {
    format!("{NODE_PREFIX}{address}")
}

/// The identity URI of a client with `role`.
pub fn client_uri(role: Role) -> String {
    format!("{CLIENT_PREFIX}{role}")
}

/// Why TLS could not be set up, or a TLS connection failed. Every message names the file or the
/// peer, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read the {what} file {}: {source}", .path.display())]
    Read {
        /// Which file: "certificate", "private key" or "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is bigger than [`MAX_PEM_FILE_BYTES`].
    #[error(
        "the {what} file {} is larger than {limit} bytes; it cannot be a PEM certificate or key, check the path",
        .path.display()
    )]
    TooLarge {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A file was read but does not hold what it should (bad PEM, no certificate, no key).
    #[error("the {what} file {}: {problem}", .path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The certificate and the key do not make a usable identity (e.g. the key is not the
    /// certificate's).
    #[error("cannot use the certificate {} with the key {}: {source}", .cert.display(), .key.display())]
    KeyPair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The files load but do not make a TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Config(String),
    /// A certificate does not name a RiteRaft node or client as [`cert_name`] expects.
    #[error("{0}")]
    Identity(String),
    /// The TLS handshake with a peer failed (the message says how, e.g. which side refused which
    /// certificate).
    #[error("the TLS handshake with {address} failed: {problem}")]
    Handshake {
        /// The peer's address.
        address: String,
        /// What went wrong, for people.
        problem: String,
    },
    /// The peer's certificate is valid but names someone other than the node expected.
    #[error(
        "{address} is not the node expected: expected a certificate for node {expected}, it {found}"
    )]
    WrongNode {
        /// The address dialed.
        address: String,
        /// The node's address the caller expected.
        expected: String,
        /// What the certificate says instead.
        found: String,
    },
}

/// The three files of a TLS identity, all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain, its own certificate first.
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) that peers' certificates must be signed by.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The flags that give these files to `riteraft-host` or `riteraft`: `--tls-cert`,
    /// `--tls-key`, `--tls-ca`, each followed by its path.
    pub fn flags(&self) -> [std::ffi::OsString; 6] {
        [
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
            "--tls-ca".into(),
            self.ca.clone().into(),
        ]
    }
}

/// The crypto provider of every RiteRaft TLS configuration: rustls's ring provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads `files`: the certificate chain, the private key and the CA roots.
pub fn load_pem(
    files: &TlsFiles,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        RootCertStore,
    ),
    TlsError,
> {
    let chain = read_certificates("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let ca = read_certificates("CA", &files.ca)?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in ca.into_iter().enumerate() {
        roots.add(cert).map_err(|error| TlsError::Pem {
            what: "CA",
            path: files.ca.clone(),
            problem: format!(
                "certificate {} is not a usable CA certificate: {error}",
                n + 1
            ),
        })?;
    }
    Ok((chain, key, roots))
}

/// Reads at most [`MAX_PEM_FILE_BYTES`] of `path`.
fn read_limited(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit: MAX_PEM_FILE_BYTES,
        });
    }
    Ok(bytes)
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_limited(what, path)?;
    let bad = |problem: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("it is not valid PEM ({error})")))?;
    if certs.is_empty() {
        return Err(bad(
            "there is no certificate in it (expected a PEM block \"BEGIN CERTIFICATE\")".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let bytes = read_limited(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        problem: match error {
            pem::Error::NoItemsFound => "there is no private key in it (expected a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")".into(),
            other => format!("it is not valid PEM ({other})"),
        },
    })
}

/// A server config that requires a client certificate of the cluster's CA and speaks HTTP/2,
/// with the certificate of the node at `address` (refused if it names anything else).
pub fn node_server_config(files: &TlsFiles, address: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key, roots) = load_pem(files)?;
    match cert_name(chain[0].as_ref())? {
        CertName::Node { address: named } if named == address => {}
        other => {
            return Err(TlsError::Identity(format!(
                "the certificate {} must name this node ({}), but it names {other}",
                files.cert.display(),
                node_uri(address)
            )));
        }
    }
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("the CA in {}: {e}", files.ca.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who the certificate `cert_der` (DER, an end-entity certificate) names; see the module
/// documentation. Exactly one `riteraft://` URI is allowed: a certificate naming both a node and
/// a client, or neither, is refused.
pub fn cert_name(cert_der: &[u8]) -> Result<CertName, TlsError> {
    let expected = format!(
        "expected one URI subject alternative name {NODE_PREFIX}HOST:PORT (a node) or {CLIENT_PREFIX}ROLE (a client; ROLE is read, write or admin)"
    );
    let refuse = |why: String| TlsError::Identity(format!("{why}; {expected}"));
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|error| refuse(format!("not a valid X.509 certificate ({error})")))?;
    let sans = cert.subject_alternative_name().map_err(|error| {
        refuse(format!(
            "the certificate's subject alternative names cannot be read ({error})"
        ))
    })?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|extension| extension.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => {
            return Err(refuse(
                "the certificate names no RiteRaft node or client (it has no riteraft:// URI)"
                    .into(),
            ));
        }
        [uri] => *uri,
        many => {
            return Err(refuse(format!(
                "the certificate names more than one identity ({})",
                many.join(", ")
            )));
        }
    };
    if let Some(address) = uri.strip_prefix(NODE_PREFIX) {
        if address.is_empty() {
            return Err(refuse(format!("{uri} names no address")));
        }
        return Ok(CertName::Node {
            address: address.to_string(),
        });
    }
    if let Some(role) = uri.strip_prefix(CLIENT_PREFIX) {
        let role: Role = role.parse().map_err(|error: UnknownRole| {
            TlsError::Identity(format!("the certificate's {uri} names an {error}"))
        })?;
        let name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .unwrap_or(uri)
            .to_string();
        return Ok(CertName::Client { name, role });
    }
    Err(refuse(format!("{uri} is neither a node nor a client")))
}

/// The rustls client side of mutual TLS, reloadable: [`ClientTls::reload`] re-reads the files
/// and later connections use the new configuration (open connections keep theirs).
pub struct ClientTls {
    files: TlsFiles,
    config: RwLock<Arc<ClientConfig>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `files` and builds the client configuration: this side's certificate for client
    /// authentication, the CA as the only roots, HTTP/2 by ALPN.
    pub fn load(files: TlsFiles) -> Result<Arc<ClientTls>, TlsError> {
        let config = client_config(&files)?;
        Ok(Arc::new(ClientTls {
            files,
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// Re-reads the files (e.g. after a certificate was renewed). If they do not load, the
    /// current configuration stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(client_config(&self.files)?);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ClientConfig> {
        // A panic while the lock was held cannot leave a half-written Arc behind: the old value
        // is as good as ever.
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let (chain, key, roots) = load_pem(files)?;
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    // gRPC is HTTP/2 only; nodes refuse anything else.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A tonic connector (a [`tower_service::Service`] of URIs) that dials TCP and does the TLS
/// handshake with the current [`ClientTls`] configuration, checking the server's certificate
/// against the host of the URI (an IP or a DNS name) like any TLS client.
///
/// With `expect_node`, it also checks that the certificate names that node
/// ([`CertName::Node`] with the same address): that is how a node makes sure the peer it dials is
/// the member it means, and not another node of the cluster that took over the address.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: Arc<ClientTls>,
    expect_node: Option<String>,
}

impl TlsConnector {
    /// A connector using `tls`, optionally insisting on the node `expect_node` (`HOST:PORT`).
    pub fn new(tls: Arc<ClientTls>, expect_node: Option<String>) -> TlsConnector {
        TlsConnector { tls, expect_node }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.config();
        let expect_node = self.expect_node.clone();
        Box::pin(async move {
            connect(&uri, config, expect_node.as_deref())
                .await
                .map(TokioIo::new)
        })
    }
}

/// Dials `uri` (`scheme://HOST:PORT`) and shakes hands; see [`TlsConnector`]. TLS failures are
/// an `io::Error` wrapping a [`TlsError`]; TCP failures are the plain `io::Error`, so that a
/// node that is down still looks down.
pub async fn connect(
    uri: &Uri,
    config: Arc<ClientConfig>,
    expect_node: Option<&str>,
) -> io::Result<TlsStream<TcpStream>> {
    let bad_uri = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no HOST:PORT in {uri}"),
        )
    };
    let authority = uri.authority().ok_or_else(bad_uri)?;
    let port = authority.port_u16().ok_or_else(bad_uri)?;
    // IPv6 hosts come in brackets in a URI, but neither TCP nor a server name wants them.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let address = authority.as_str().to_string();
    let server_name = ServerName::try_from(host.to_string()).map_err(|error| {
        io::Error::other(TlsError::Handshake {
            address: address.clone(),
            problem: format!("{host:?} is not a valid server name ({error})"),
        })
    })?;
    let tcp = TcpStream::connect((host, port)).await?;
    // Requests are small and latency-bound: do not let Nagle hold them back.
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|error| {
            io::Error::other(TlsError::Handshake {
                address: address.clone(),
                problem: describe_io(&error),
            })
        })?;
    if let Some(expected) = expect_node {
        let found = match stream.get_ref().1.peer_certificates() {
            None | Some([]) => Err("presented no certificate".to_string()),
            Some([end_entity, ..]) => match cert_name(end_entity) {
                Ok(CertName::Node { address }) if same_address(&address, expected) => Ok(()),
                Ok(other) => Err(format!("is {other}")),
                Err(error) => Err(format!("names no node: {error}")),
            },
        };
        if let Err(found) = found {
            return Err(io::Error::other(TlsError::WrongNode {
                address,
                expected: expected.to_string(),
                found,
            }));
        }
    }
    Ok(stream)
}

/// Whether two node addresses are the same node, leniently: an optional `http://`, a trailing
/// `/` and the case of the host do not matter.
fn same_address(a: &str, b: &str) -> bool {
    match (crate::address::authority(a), crate::address::authority(b)) {
        (Ok(a), Ok(b)) => a.eq_ignore_ascii_case(&b),
        _ => a.trim() == b.trim(),
    }
}

/// A handshake's I/O error for people: rustls errors get a hint of what to check.
fn describe_io(error: &io::Error) -> String {
    if let Some(rustls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return describe_rustls(rustls);
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
            "the peer closed the connection during the handshake ({error}); does it serve TLS?"
        ),
        _ => error.to_string(),
    }
}

/// A rustls error for people, saying which side refused what.
///
/// Every RiteRaft CA has the same name, so a certificate from another cluster's CA is not
/// "from an unknown issuer": it names a trusted issuer whose signature does not verify
/// (`BadSignature` here, a `DecryptError` alert from a peer that refuses ours).
fn describe_rustls(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::AlertReceived(alert) => describe_alert(&format!("{alert:?}")),
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the peer's certificate is not signed by the CA this side trusts (is the CA file the cluster's?)".into()
        }
        E::InvalidCertificate(problem) => {
            format!("the peer's certificate is not acceptable: {problem:?}")
        }
        other => other.to_string(),
    }
}

/// The alerts a peer sends when it refuses the certificate it was given (see [`describe_rustls`]
/// for `DecryptError`).
const CERTIFICATE_ALERTS: [AlertDescription; 9] = [
    AlertDescription::DecryptError,
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// A TLS alert received, by its name (`UnknownCA`), for people.
fn describe_alert(name: &str) -> String {
    if CERTIFICATE_ALERTS
        .iter()
        .any(|alert| format!("{alert:?}") == name)
    {
        format!(
            "the peer refused this side's certificate ({name}); is it signed by the cluster's CA, valid now, and given with its key?"
        )
    } else {
        format!("the peer ended the TLS session ({name})")
    }
}

/// What rustls's `Display` puts before the name of an alert received. An alert that arrives
/// after the handshake (with TLS 1.3, a server refuses a client's certificate only then) reaches
/// us through h2, which keeps only the kind and the text of I/O errors: this text is all there
/// is to recognize it by.
const ALERT_TEXT: &str = "received fatal alert: ";

/// If `error` or one of its causes is a TLS failure, what it says for people; `None` for any
/// other failure (a refused TCP connection, a node's status). Works on what tonic returns (a
/// `Status`, a transport error): the host uses it to log why a peer could not be dialed. Looks
/// inside `io::Error`s, whose `source` skips the error they wrap.
pub fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        let wrapped = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
        for candidate in std::iter::once(error).chain(wrapped) {
            if let Some(tls) = candidate.downcast_ref::<TlsError>() {
                return Some(tls.to_string());
            }
            if let Some(rustls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(format!("TLS failed: {}", describe_rustls(rustls)));
            }
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::InvalidData
            && let Some(name) = io.to_string().strip_prefix(ALERT_TEXT)
        {
            return Some(format!("TLS failed: {}", describe_alert(name)));
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use rustls::ServerConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tower_service::Service as _;

    use super::*;
    use crate::certs::{self, CertAuthority};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn roles_are_ordered_and_spelled_as_in_certificates() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        let error = "root".parse::<Role>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown role \"root\"; expected read, write or admin"
        );
        assert!("Admin".parse::<Role>().is_err(), "roles are lower case");
    }

    #[test]
    fn issued_certificates_name_their_holder() {
        let ca = CertAuthority::create().unwrap();
        for address in ["127.0.0.1:7001", "[::1]:7002", "node-1.example:7003"] {
            let (cert, _) = ca.issue_node(address).unwrap();
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            assert_eq!(
                cert_name(&der).unwrap(),
                CertName::Node {
                    address: address.to_string()
                }
            );
        }
        for role in Role::ALL {
            let (cert, _) = ca.issue_client("alice", role).unwrap();
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            assert_eq!(
                cert_name(&der).unwrap(),
                CertName::Client {
                    name: "alice".into(),
                    role
                }
            );
        }
    }

    /// A certificate with exactly the URI SANs given, signed by itself.
    fn with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn certificates_without_exactly_one_known_identity_are_refused() {
        for (uris, why) in [
            (&[][..], "names no RiteRaft node or client"),
            (
                &["https://example.com/x"][..],
                "names no RiteRaft node or client",
            ),
            (
                &["riteraft://node/a:1", "riteraft://client/admin"][..],
                "more than one identity (riteraft://node/a:1, riteraft://client/admin)",
            ),
            (&["riteraft://node/"][..], "names no address"),
            (
                &["riteraft://member/a:1"][..],
                "neither a node nor a client",
            ),
        ] {
            let message = cert_name(&with_uris(uris)).unwrap_err().to_string();
            assert!(message.contains(why), "{uris:?}: {message}");
            assert!(
                message.contains(
                    "expected one URI subject alternative name riteraft://node/HOST:PORT"
                ),
                "{uris:?}: {message}"
            );
        }
        let message = cert_name(&with_uris(&["riteraft://client/root"]))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("riteraft://client/root names an unknown role \"root\"; expected read, write or admin"),
            "{message}"
        );
        let garbage = cert_name(b"not a certificate").unwrap_err().to_string();
        assert!(
            garbage.contains("not a valid X.509 certificate"),
            "{garbage}"
        );
        // Other URIs next to the identity do not matter.
        assert_eq!(
            cert_name(&with_uris(&[
                "https://example.com",
                "riteraft://client/read"
            ]))
            .unwrap(),
            CertName::Client {
                name: "rcgen self signed cert".into(),
                role: Role::Read
            }
        );
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::write_test_pki(dir.path(), &["127.0.0.1:7001".into()], &[]).unwrap();
        let good = pki.nodes[0].clone();
        assert!(load_pem(&good).is_ok());
        let cert_pem = std::fs::read_to_string(&good.cert).unwrap();

        let missing = dir.path().join("nope.pem");
        let cases = [
            (
                TlsFiles {
                    cert: missing.clone(),
                    ..good.clone()
                },
                "cannot read the certificate file",
                missing.clone(),
            ),
            (
                TlsFiles {
                    key: missing.clone(),
                    ..good.clone()
                },
                "cannot read the private key file",
                missing.clone(),
            ),
            (
                TlsFiles {
                    ca: missing.clone(),
                    ..good.clone()
                },
                "cannot read the CA file",
                missing.clone(),
            ),
            (
                TlsFiles {
                    cert: good.key.clone(),
                    ..good.clone()
                },
                "there is no certificate in it",
                good.key.clone(),
            ),
            (
                TlsFiles {
                    key: good.cert.clone(),
                    ..good.clone()
                },
                "there is no private key in it",
                good.cert.clone(),
            ),
            (
                TlsFiles {
                    ca: good.key.clone(),
                    ..good.clone()
                },
                "the CA file",
                good.key.clone(),
            ),
        ];
        for (files, why, path) in cases {
            let message = load_pem(&files).unwrap_err().to_string();
            assert!(message.contains(why), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }

        let truncated = write(dir.path(), "truncated.pem", &cert_pem[..cert_pem.len() / 2]);
        let message = load_pem(&TlsFiles {
            cert: truncated.clone(),
            ..good.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(message.contains("not valid PEM"), "{message}");
        assert!(message.contains("truncated.pem"), "{message}");

        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_FILE_BYTES as usize + 1]).unwrap();
        let message = load_pem(&TlsFiles {
            ca: big,
            ..good.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("big.pem is larger than 1048576 bytes"),
            "{message}"
        );

        // A key that is not the certificate's is refused when the configuration is built.
        let other = CertAuthority::create()
            .unwrap()
            .issue_node("127.0.0.1:7001")
            .unwrap();
        let other_key = write(dir.path(), "other.key", &other.1);
        let error = ClientTls::load(TlsFiles {
            key: other_key,
            ..good.clone()
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::KeyPair { .. }), "{error}");
        assert!(error.to_string().contains("other.key"), "{error}");
    }

    #[test]
    fn a_reload_with_broken_files_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::write_test_pki(dir.path(), &[], &[("alice".into(), Role::Read)]).unwrap();
        let files = pki.clients[0].clone();
        let tls = ClientTls::load(files.clone()).unwrap();
        let first = tls.config();

        let good_cert = std::fs::read(&files.cert).unwrap();
        std::fs::write(&files.cert, "garbage").unwrap();
        let error = tls.reload().unwrap_err();
        assert!(error.to_string().contains("no certificate"), "{error}");
        assert!(
            Arc::ptr_eq(&first, &tls.config()),
            "the old config was replaced"
        );

        std::fs::write(&files.cert, good_cert).unwrap();
        tls.reload().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &tls.config()),
            "a good reload must swap"
        );
        assert_eq!(tls.config().alpn_protocols, [b"h2".to_vec()]);
    }

    /// A node's server configuration: `node`'s certificate from `node_dir`, client certificates
    /// required from the CA `ca`, HTTP/2.
    fn server_config(node_dir: &Path, node: &str, ca: &Path) -> Arc<ServerConfig> {
        let files = TlsFiles {
            ca: ca.to_path_buf(),
            ..certs::node_files(node_dir, node)
        };
        node_server_config(&files, node).unwrap()
    }

    /// A TLS server on 127.0.0.1 with [`server_config`] that echoes one byte per connection.
    async fn server(node_dir: &Path, node: &str, ca: &Path) -> std::net::SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(node_dir, node, ca));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        let mut byte = [0; 1];
                        if stream.read_exact(&mut byte).await.is_ok() {
                            let _ = stream.write_all(&byte).await;
                            let _ = stream.flush().await;
                        }
                    }
                });
            }
        });
        address
    }

    async fn dial(
        tls: &Arc<ClientTls>,
        address: std::net::SocketAddr,
        expect_node: Option<String>,
    ) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
        let uri: Uri = format!("http://{address}").parse().unwrap();
        TlsConnector::new(tls.clone(), expect_node).call(uri).await
    }

    #[tokio::test]
    async fn the_connector_checks_the_peer_it_dials() {
        let dir = tempfile::tempdir().unwrap();
        // The certificate names 127.0.0.1:7001 while the server listens on whatever port it
        // got: the connector compares the name with the expectation, not with the port dialed.
        let node = "127.0.0.1:7001".to_string();
        let pki = certs::write_test_pki(
            dir.path(),
            std::slice::from_ref(&node),
            &[("alice".into(), Role::Write)],
        )
        .unwrap();
        let client = ClientTls::load(pki.clients[0].clone()).unwrap();

        let address = server(dir.path(), &node, &pki.ca).await;

        // Without expectation, and expecting the node the certificate names: both work, and
        // the stream carries data both ways.
        for expect in [None, Some(node.clone()), Some(format!("http://{node}/"))] {
            let mut stream = dial(&client, address, expect.clone())
                .await
                .unwrap()
                .into_inner();
            stream.write_all(b"x").await.unwrap();
            stream.flush().await.unwrap();
            let mut echo = [0; 1];
            stream.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"x", "{expect:?}");
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        }

        // Expecting another node: refused after the handshake, with both names in the error.
        let error = dial(&client, address, Some("127.0.0.1:1".into()))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(
                error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()),
                Some(TlsError::WrongNode { .. })
            ),
            "{message}"
        );
        assert!(
            message.contains("expected a certificate for node 127.0.0.1:1"),
            "{message}"
        );
        assert!(message.contains(&format!("is node {node}")), "{message}");
        assert!(tls_failure(&error).is_some());
    }

    #[tokio::test]
    async fn a_server_from_another_ca_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let node = "127.0.0.1:7001".to_string();
        let pki =
            certs::write_test_pki(ours.path(), &[], &[("alice".into(), Role::Admin)]).unwrap();
        certs::write_test_pki(theirs.path(), std::slice::from_ref(&node), &[]).unwrap();
        let client = ClientTls::load(pki.clients[0].clone()).unwrap();
        // Their server even trusts our CA: the refusal is ours.
        let address = server(theirs.path(), &node, &pki.ca).await;

        let error = dial(&client, address, None).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("the TLS handshake with 127.0.0.1:")
                && message.contains("not signed by the CA this side trusts"),
            "{message}"
        );
        assert!(tls_failure(&error).is_some());
    }

    #[tokio::test]
    async fn a_client_from_another_ca_is_refused_by_the_server() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let node = "127.0.0.1:7001".to_string();
        let pki = certs::write_test_pki(ours.path(), std::slice::from_ref(&node), &[]).unwrap();
        let stranger =
            certs::write_test_pki(theirs.path(), &[], &[("eve".into(), Role::Admin)]).unwrap();
        // Eve trusts our CA (so she accepts the server) but her certificate is from hers.
        let eve = ClientTls::load(TlsFiles {
            ca: pki.ca.clone(),
            ..stranger.clients[0].clone()
        })
        .unwrap();
        let address = server(ours.path(), &node, &pki.ca).await;

        // With TLS 1.3 the client learns of the refusal on its first read.
        let outcome = async {
            let mut stream = dial(&eve, address, None).await?.into_inner();
            stream.write_all(b"x").await?;
            stream.flush().await?;
            let mut echo = [0; 1];
            stream.read_exact(&mut echo).await?;
            io::Result::Ok(())
        }
        .await;
        let error = outcome.unwrap_err();
        let why = tls_failure(&error).unwrap_or_else(|| panic!("not a TLS failure: {error}"));
        assert!(why.contains("refused this side's certificate"), "{why}");
    }
}
