//! Making a cluster's certificates: a CA of its own, node certificates and client certificates
//! that name their holders as [`tls`](crate::tls) reads them. Used by `riteraft certs` and by
//! test harnesses ([`write_test_pki`]).
//!
//! A directory of certificates looks like this (the names are fixed so that [`node_files`] and
//! [`client_files`] can find them):
//! - `ca.pem`, `ca.key`: the CA;
//! - `node-HOST-PORT.pem`, `.key`: the node at `HOST:PORT` (characters of HOST other than
//!   letters, digits, `.` and `-` become `_`, so `[::1]:7001` is `node-__1-7001`);
//! - `client-NAME.pem`, `.key`: the client NAME.
//!
//! Keys are written with mode 0600, certificates 0644.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::address::authority;
use crate::tls::{MAX_PEM_FILE_BYTES, Role, TlsFiles, client_uri, node_uri};

/// The CA's certificate, in a certificates directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key, in a certificates directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long issued certificates are valid: a year. Long enough that a test or small cluster
/// never meets an expiry, short enough that a lost key does not stay good forever; renewing is
/// running `riteraft certs --force` again and reloading.
const ISSUED_VALIDITY: Duration = Duration::days(365);
/// How long the CA is valid: ten years. Replacing it means reissuing every certificate and
/// restarting every node at once, so it should outlive the cluster.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Certificates start to be valid this long before they are made, so that a node whose clock is
/// a little behind the machine that made them accepts them at once.
const CLOCK_SKEW: Duration = Duration::hours(1);
/// Longest client name: 64 characters, the X.509 upper bound of a common name (RFC 5280).
const MAX_CLIENT_NAME: usize = 64;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file to write exists already and overwriting was not asked for.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The CA files of a directory are incomplete or unusable.
    #[error("the CA in {}: {problem}", .dir.display())]
    BadCa {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A node address is not `HOST:PORT`.
    #[error("{0}")]
    BadAddress(String),
    /// A client name cannot be used (it also names its files).
    #[error(
        "bad client name {0:?}: expected 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    BadClientName(String),
    /// The same certificate was asked for twice.
    #[error("{0} is given twice")]
    Duplicate(String),
    /// rcgen could not make a key or a certificate.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate authority: its certificate and the key it signs with.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// The validity of a certificate made now: from a little before now, for `validity`.
fn validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

impl CertAuthority {
    /// A new CA: self-signed, "RiteRaft cluster CA", valid ten years, allowed to sign end-entity
    /// certificates only (no intermediate CAs below it).
    pub fn create() -> Result<CertAuthority, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("RiteRaft cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY);
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(CertAuthority {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// The CA saved in `dir` (`ca.pem` and `ca.key`).
    pub fn load(dir: &Path) -> Result<CertAuthority, CertError> {
        let bad = |problem: String| CertError::BadCa {
            dir: dir.to_path_buf(),
            problem,
        };
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_text(&dir.join(CA_KEY_FILE))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|error| {
            bad(format!(
                "{CA_KEY_FILE} is not a usable private key ({error})"
            ))
        })?;
        let der = pem_der(&cert_pem).ok_or_else(|| {
            bad(format!(
                "{CA_CERT_FILE} holds no PEM certificate (expected \"BEGIN CERTIFICATE\")"
            ))
        })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|error| {
            bad(format!(
                "{CA_CERT_FILE} is not a valid certificate ({error})"
            ))
        })?;
        // Certificates signed with a key that is not the CA certificate's would never verify.
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(format!(
                "{CA_KEY_FILE} is not the key of the certificate in {CA_CERT_FILE}"
            )));
        }
        if !cert.is_ca() {
            return Err(bad(format!("{CA_CERT_FILE} is not a CA certificate")));
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(|error| bad(format!("{CA_CERT_FILE} cannot sign ({error})")))?;
        Ok(CertAuthority {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// Writes the CA to `dir` (`ca.pem`, and `ca.key` with mode 0600); refuses to overwrite
    /// either unless `force`. Returns the paths written.
    pub fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertError> {
        create_dir(dir)?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        if !force {
            refuse_existing([&cert, &key])?;
        }
        write_file(&cert, &self.cert_pem, false, force)?;
        write_file(&key, &self.key_pem, true, force)?;
        Ok(vec![cert, key])
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for the node at `address` (`HOST:PORT`): HOST as an IP or DNS name, the
    /// identity URI `riteraft://node/HOST:PORT`, usable as server and as client (nodes dial each
    /// other). Returns (certificate PEM, private key PEM).
    pub fn issue_node(&self, address: &str) -> Result<(String, String), CertError> {
        let address = node_address(address)?;
        let (host, _port) = split_host(&address);
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("riteraft node {address}"));
        let host_name = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into()?),
        };
        params.subject_alt_names = vec![host_name, SanType::URI(node_uri(&address).try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate for `name` with `role`: common name `name`, identity URI
    /// `riteraft://client/ROLE`, usable as client only. Returns (certificate PEM, private key
    /// PEM).
    pub fn issue_client(&self, name: &str, role: Role) -> Result<(String, String), CertError> {
        check_client_name(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.subject_alt_names = vec![SanType::URI(client_uri(role).try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<(String, String), CertError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Lets verifiers find the CA's key by its identifier, not only by its name.
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, ISSUED_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// `address` as node certificates name it: `HOST:PORT`, checked, without scheme.
fn node_address(address: &str) -> Result<String, CertError> {
    authority(address).map_err(|error| CertError::BadAddress(error.to_string()))
}

/// The host (without IPv6 brackets) and the port of a `HOST:PORT`.
fn split_host(address: &str) -> (&str, &str) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

fn check_client_name(name: &str) -> Result<(), CertError> {
    let good = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if good {
        Ok(())
    } else {
        Err(CertError::BadClientName(name.to_string()))
    }
}

/// The file name, without extension, of the node at `address`'s certificate and key.
pub fn node_file_stem(address: &str) -> String {
    let trimmed = address.trim();
    let bare = trimmed
        .split_once("://")
        .map_or(trimmed, |(_, rest)| rest)
        .trim_end_matches('/');
    let (host, port) = split_host(bare);
    let safe = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("node-{}-{}", safe(host), safe(port))
}

/// The files of the node at `address` in the certificates directory `dir`.
pub fn node_files(dir: &Path, address: &str) -> TlsFiles {
    let stem = node_file_stem(address);
    TlsFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        ca: dir.join(CA_CERT_FILE),
    }
}

/// The files of the client `name` in the certificates directory `dir`.
pub fn client_files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("client-{name}.pem")),
        key: dir.join(format!("client-{name}.key")),
        ca: dir.join(CA_CERT_FILE),
    }
}

/// What [`write_pki`] made.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (`DIR/ca.pem`).
    pub ca: PathBuf,
    /// Whether the CA was made now (otherwise the one in the directory was used).
    pub ca_created: bool,
    /// The files of each node, in the order given.
    pub nodes: Vec<TlsFiles>,
    /// The files of each client, in the order given.
    pub clients: Vec<TlsFiles>,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

/// Makes certificates for `nodes` (`HOST:PORT`) and `clients` (name, role) in `dir`, signed by
/// the CA there, which is made first if `dir` has none. Refuses to overwrite any file unless
/// `force`; checks everything and makes every certificate before writing the first file, so a
/// refusal writes nothing.
pub fn write_pki(
    dir: &Path,
    nodes: &[String],
    clients: &[(String, Role)],
    force: bool,
) -> Result<Pki, CertError> {
    let has_cert = dir.join(CA_CERT_FILE).exists();
    let has_key = dir.join(CA_KEY_FILE).exists();
    let (ca, ca_created) = match (has_cert, has_key) {
        (true, true) => (CertAuthority::load(dir)?, false),
        (false, false) => (CertAuthority::create()?, true),
        (true, false) | (false, true) => {
            let (there, missing) = if has_cert {
                (CA_CERT_FILE, CA_KEY_FILE)
            } else {
                (CA_KEY_FILE, CA_CERT_FILE)
            };
            return Err(CertError::BadCa {
                dir: dir.to_path_buf(),
                problem: format!(
                    "{there} is there but {missing} is not; restore it, or remove {there} to make a new CA (which means new certificates for everyone)"
                ),
            });
        }
    };

    // (files, certificate PEM, key PEM) of every node, then every client.
    let mut issued: Vec<(TlsFiles, String, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for address in nodes {
        let address = node_address(address)?;
        let files = node_files(dir, &address);
        if !seen.insert(files.cert.clone()) {
            return Err(CertError::Duplicate(format!("node {address}")));
        }
        let (cert, key) = ca.issue_node(&address)?;
        issued.push((files, cert, key));
    }
    for (name, role) in clients {
        check_client_name(name)?;
        let files = client_files(dir, name);
        if !seen.insert(files.cert.clone()) {
            return Err(CertError::Duplicate(format!("client {name}")));
        }
        let (cert, key) = ca.issue_client(name, *role)?;
        issued.push((files, cert, key));
    }
    if !force {
        refuse_existing(
            issued
                .iter()
                .flat_map(|(files, ..)| [&files.cert, &files.key]),
        )?;
    }

    let mut written = Vec::new();
    if ca_created {
        written.extend(ca.save(dir, force)?);
    }
    for (files, cert, key) in &issued {
        write_file(&files.cert, cert, false, force)?;
        write_file(&files.key, key, true, force)?;
        written.extend([files.cert.clone(), files.key.clone()]);
    }
    let mut files = issued.into_iter().map(|(files, ..)| files);
    Ok(Pki {
        ca: dir.join(CA_CERT_FILE),
        ca_created,
        nodes: files.by_ref().take(nodes.len()).collect(),
        clients: files.collect(),
        written,
    })
}

/// [`write_pki`] for test harnesses: overwrites what is there (keeping the CA, so that more
/// nodes can be added to the same directory later).
pub fn write_test_pki(
    dir: &Path,
    nodes: &[String],
    clients: &[(String, Role)],
) -> Result<Pki, CertError> {
    write_pki(dir, nodes, clients, true)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn refuse_existing<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Result<(), CertError> {
    match paths.into_iter().find(|path| path.exists()) {
        Some(path) => Err(CertError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

/// Writes `contents` to `path`, a private key (`private`: mode 0600) or a certificate (0644).
/// Without `force`, fails if the file exists, even if it appeared since it was checked.
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), CertError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let write_error = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            write_error(source)
        }
    })?;
    // The mode above only applies to a new file: an overwritten key file keeps its own mode
    // unless it is set again, before the key goes in.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}

/// Reads a PEM file of at most [`MAX_PEM_FILE_BYTES`] (the same limit, for the same reason, as
/// [`crate::tls::load_pem`]).
fn read_text(path: &Path) -> Result<String, CertError> {
    let read_error = |source| CertError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|file| file.take(MAX_PEM_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(read_error)?;
    if text.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(read_error(io::Error::other(format!(
            "it is larger than {MAX_PEM_FILE_BYTES} bytes, which no PEM certificate or key is"
        ))));
    }
    Ok(text)
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::tls::{self, CertName};

    fn parse(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// Whether `leaf` verifies as a client certificate under the CA `ca`.
    fn verifies_as_client(ca: &CertAuthority, leaf: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(parse(ca.cert_pem())).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            tls::crypto_provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&parse(leaf), &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn node_certificates_carry_the_host_the_uri_and_both_usages() {
        let ca = CertAuthority::create().unwrap();
        for (address, host) in [
            ("127.0.0.1:7001", "ip 127.0.0.1"),
            ("http://node-1.example:7001/", "dns node-1.example"),
            ("[::1]:7001", "ip ::1"),
        ] {
            let (cert, key) = ca.issue_node(address).unwrap();
            assert!(key.contains("BEGIN PRIVATE KEY"), "{key}");
            let der = parse(&cert);
            let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
            let names: Vec<String> = x509
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::IPAddress(bytes) => {
                        let ip: IpAddr = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).unwrap().into(),
                            _ => <[u8; 16]>::try_from(*bytes).unwrap().into(),
                        };
                        format!("ip {ip}")
                    }
                    GeneralName::DNSName(dns) => format!("dns {dns}"),
                    GeneralName::URI(uri) => format!("uri {uri}"),
                    other => format!("{other:?}"),
                })
                .collect();
            let bare = authority(address).unwrap();
            assert_eq!(
                names,
                [host.to_string(), format!("uri riteraft://node/{bare}")]
            );
            let usages = x509.extended_key_usage().unwrap().unwrap().value;
            assert!(usages.server_auth && usages.client_auth, "{address}");
            let cn = x509.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), format!("riteraft node {bare}"));
            assert!(!x509.is_ca());
            // A year, give or take the clock-skew margin.
            let days = (x509.validity().not_after.timestamp()
                - x509.validity().not_before.timestamp())
                / 86_400;
            assert_eq!(days, 365, "{address}");
        }
        assert!(
            matches!(ca.issue_node("nowhere"), Err(CertError::BadAddress(m)) if m.contains("port is missing"))
        );
    }

    #[test]
    fn client_certificates_are_for_clients_only() {
        let ca = CertAuthority::create().unwrap();
        let (cert, _) = ca.issue_client("ops-1", Role::Write).unwrap();
        let der = parse(&cert);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let usages = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(usages.client_auth && !usages.server_auth);
        assert_eq!(
            tls::cert_name(&der).unwrap(),
            CertName::Client {
                name: "ops-1".into(),
                role: Role::Write
            }
        );
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            let error = ca.issue_client(bad, Role::Read).unwrap_err();
            assert!(
                matches!(error, CertError::BadClientName(_)),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn the_ca_is_a_ca_and_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::create().unwrap();
        let der = parse(ca.cert_pem());
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(x509.is_ca());
        assert_eq!(
            x509.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "RiteRaft cluster CA"
        );
        let usage = x509.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());

        ca.save(dir.path(), false).unwrap();
        assert!(matches!(
            ca.save(dir.path(), false),
            Err(CertError::Exists { .. })
        ));
        let loaded = CertAuthority::load(dir.path()).unwrap();
        // What the loaded CA signs verifies under the saved certificate, and what another CA
        // signs does not.
        let (leaf, _) = loaded.issue_client("alice", Role::Read).unwrap();
        assert!(verifies_as_client(&ca, &leaf));
        let (stranger, _) = CertAuthority::create()
            .unwrap()
            .issue_client("eve", Role::Read)
            .unwrap();
        assert!(!verifies_as_client(&ca, &stranger));

        // A key that is not the CA's is refused at load.
        let other = CertAuthority::create().unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), &other.key_pem).unwrap();
        let error = CertAuthority::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("ca.key is not the key of the certificate in ca.pem"),
            "{error}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private_and_nothing_is_overwritten_without_force() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let nodes = ["127.0.0.1:7001".to_string(), "[::1]:7002".to_string()];
        let clients = [("admin".to_string(), Role::Admin)];
        let pki = write_pki(dir.path(), &nodes, &clients, false).unwrap();
        assert!(pki.ca_created);
        assert_eq!(pki.nodes[0], node_files(dir.path(), "127.0.0.1:7001"));
        assert!(
            pki.nodes[1].cert.ends_with("node-__1-7002.pem"),
            "{:?}",
            pki.nodes[1]
        );
        assert_eq!(pki.clients, [client_files(dir.path(), "admin")]);
        assert_eq!(pki.written.len(), 2 + 2 * 3);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&pki.clients[0].key), 0o600);
        assert_eq!(mode(&pki.nodes[0].key), 0o600);
        assert_eq!(mode(&pki.nodes[0].cert), 0o644);
        let ca_before = std::fs::read(&pki.ca).unwrap();
        let key_before = std::fs::read(&pki.clients[0].key).unwrap();

        // Again without force: refused, and nothing changed (not even the new node's files).
        let more = ["127.0.0.1:7003".to_string(), nodes[0].clone()];
        let error = write_pki(dir.path(), &more, &[], false).unwrap_err();
        assert!(
            matches!(&error, CertError::Exists { path } if path.ends_with("node-127.0.0.1-7001.pem")),
            "{error}"
        );
        assert!(!node_files(dir.path(), "127.0.0.1:7003").cert.exists());

        // With force: the CA is reused, the leaves are new, a loosened key mode is tightened.
        std::fs::set_permissions(&pki.clients[0].key, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let again = write_pki(dir.path(), &more, &clients, true).unwrap();
        assert!(!again.ca_created);
        assert_eq!(std::fs::read(&pki.ca).unwrap(), ca_before);
        assert_ne!(std::fs::read(&pki.clients[0].key).unwrap(), key_before);
        assert_eq!(mode(&pki.clients[0].key), 0o600);
        // And everything it wrote loads and names its holder.
        for files in again.nodes.iter().chain(&again.clients) {
            let (chain, ..) = tls::load_pem(files).unwrap();
            assert!(tls::cert_name(&chain[0]).is_ok());
        }

        let twice = write_pki(
            dir.path(),
            &[],
            &[clients[0].clone(), clients[0].clone()],
            true,
        );
        assert!(matches!(twice, Err(CertError::Duplicate(m)) if m == "client admin"));
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let half = write_pki(dir.path(), &[], &clients, true)
            .unwrap_err()
            .to_string();
        assert!(half.contains("ca.pem is there but ca.key is not"), "{half}");
    }
}
