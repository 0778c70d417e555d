//! TLS for client and peer connections, on rustls with the ring provider: configs built from
//! etcd's flags, the acceptor and the connector that wrap a socket, the re-reading of changed
//! certificate files, self-signed certificates for `--auto-tls`, and the name carried by a
//! verified client certificate.
//!
//! Owns every use of rustls. Must never look at what flows over a connection once its
//! handshake is done: h2, HTTP/1.1 and the peer wire each see a plain byte stream.
//!
//! Reload: every handshake looks at the size, mtime and inode of the certificate, key and CA
//! files (three `stat`s, no read) and rebuilds the config only when one of them changed, as
//! etcd re-reads its files on every handshake. A rebuild that fails (a file half written) keeps
//! the previous config and is retried when the files change again.

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use futures_rustls::client::TlsStream as ClientTlsStream;
pub use futures_rustls::server::TlsStream as ServerTlsStream;

/// How long a handshake may take, accepting or dialing. A client that connects and then says
/// nothing (or speaks plain text and waits) holds a socket no longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocols of the client port: gRPC needs "h2"; HTTP/1.1 clients of `/health`,
/// `/version` and `/metrics` reach the same port.
pub const CLIENT_ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS protocol version, named as etcd's `--tls-min-version` / `--tls-max-version` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Parses etcd's names. TLS1.0 and TLS1.1 exist in etcd but not in rustls, so they are
    /// refused rather than silently raised.
    pub fn parse(name: &str) -> Result<Self, TlsError> {
        match name {
            "TLS1.2" => Ok(Self::Tls12),
            "TLS1.3" => Ok(Self::Tls13),
            _ => Err(TlsError::Version(name.to_string())),
        }
    }

    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Self::Tls12 => &rustls::version::TLS12,
            Self::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// One side's TLS settings (etcd's `TLSInfo`): the same value serves a listener and, for
/// peers, the dialer, which presents `cert_file` as its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that the other side's certificate must chain to. On a listener it makes a
    /// client certificate required, as etcd does; a dialer verifies the server with it.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file` (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// TLS 1.2 cipher suites by Go's names (`--cipher-suites`); empty means rustls' defaults.
    /// TLS 1.3 suites are not configurable, as in Go.
    pub cipher_suites: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// The certificate was made by [`self_signed`]: a dialer then skips verifying the server,
    /// as etcd does for `--peer-auto-tls`.
    pub self_signed: bool,
}

impl TlsConfig {
    /// A certificate and key with everything else at etcd's defaults: no client certificate,
    /// TLS 1.2 and 1.3, rustls' cipher suites.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            cert_file,
            key_file,
            trusted_ca_file: None,
            client_cert_auth: false,
            cipher_suites: Vec::new(),
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            self_signed: false,
        }
    }

    /// Whether a listener asks for, and requires, a verified client certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    /// Checks every file and flag now, so a bad setting stops start-up instead of failing
    /// each handshake.
    pub fn validate(&self) -> Result<(), TlsError> {
        self.server_config(CLIENT_ALPN_PROTOCOLS).map(drop)
    }

    /// A listener's config: its certificate, the client verifier when a client certificate is
    /// required, and the given ALPN protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(self.provider()?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions()?)?;
        let builder = match (self.requires_client_cert(), &self.trusted_ca_file) {
            (false, _) => builder.with_no_client_auth(),
            (true, None) => return Err(TlsError::ClientCertAuthWithoutCa),
            (true, Some(ca_file)) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(read_roots(ca_file)?, provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(read_certs(&self.cert_file)?, read_key(&self.key_file)?)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A dialer's config: presents `cert_file` as the client certificate and verifies the
    /// server against `trusted_ca_file` (or not at all for a self-signed pair).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(self.provider()?);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions()?)?;
        let builder = match (&self.trusted_ca_file, self.self_signed) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
            (Some(ca_file), false) => builder.with_root_certificates(read_roots(ca_file)?),
            (None, false) => return Err(TlsError::DialWithoutCa),
        };
        let config = builder
            .with_client_auth_cert(read_certs(&self.cert_file)?, read_key(&self.key_file)?)?;
        Ok(Arc::new(config))
    }

    fn versions(&self) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
        if self.min_version > self.max_version {
            return Err(TlsError::VersionRange);
        }
        if !self.cipher_suites.is_empty() && self.min_version == TlsVersion::Tls13 {
            return Err(TlsError::CipherSuitesWithTls13Only);
        }
        Ok([TlsVersion::Tls12, TlsVersion::Tls13]
            .into_iter()
            .filter(|v| (self.min_version..=self.max_version).contains(v))
            .map(TlsVersion::rustls)
            .collect())
    }

    fn provider(&self) -> Result<CryptoProvider, TlsError> {
        let mut provider = ring_provider::default_provider();
        if !self.cipher_suites.is_empty() {
            let mut suites = Vec::with_capacity(self.cipher_suites.len());
            for name in &self.cipher_suites {
                if let Some(suite) = cipher_suite(name)? {
                    suites.push(suite);
                }
            }
            // Go ignores the list for TLS 1.3, whose suites are always on; so does Basalt.
            suites.extend(
                ring_provider::ALL_CIPHER_SUITES
                    .iter()
                    .filter(|s| s.version() == &rustls::version::TLS13),
            );
            provider.cipher_suites = suites;
        }
        Ok(provider)
    }

    /// The files a change of which means rebuilding the config.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.trusted_ca_file.clone());
        files
    }
}

/// The TLS 1.2 suite Go calls `name`; `None` for a TLS 1.3 suite (always on, as in Go). Names
/// Go knows but rustls does not offer (CBC, RSA key exchange, 3DES, RC4) are refused.
fn cipher_suite(name: &str) -> Result<Option<rustls::SupportedCipherSuite>, TlsError> {
    use ring_provider::cipher_suite as cs;
    let suite = match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        // Go has both spellings of the ChaCha20 suites.
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Ok(None)
        }
        _ => return Err(TlsError::CipherSuite(name.to_string())),
    };
    Ok(Some(suite))
}

/// Wraps accepted sockets in TLS with a config that follows its files on disk.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<Reloading<rustls::ServerConfig>>,
}

impl TlsAcceptor {
    /// Loads the files now: an error here is a start-up error.
    pub fn new(tls: &TlsConfig, alpn: &'static [&'static [u8]]) -> Result<Self, TlsError> {
        let tls_for_build = tls.clone();
        let config = Reloading::new(
            tls.watched_files(),
            Box::new(move || tls_for_build.server_config(alpn)),
        )?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Runs the server handshake, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, stream: S) -> Result<ServerTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = futures_rustls::TlsAcceptor::from(self.config.current());
        within_handshake_timeout(acceptor.accept(stream)).await
    }
}

/// The Common Name of the client certificate the handshake verified; `None` when the listener
/// asks for no client certificate. A verified certificate without a CN gives `Some("")`, as
/// etcd then takes the empty string as the user name.
pub fn client_common_name<S>(stream: &ServerTlsStream<S>) -> Option<String> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next();
    Some(cn.and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string())
}

/// Wraps dialed sockets in TLS (peers), re-reading changed files like [`TlsAcceptor`].
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<Reloading<rustls::ClientConfig>>,
}

impl TlsConnector {
    pub fn new(tls: &TlsConfig) -> Result<Self, TlsError> {
        let tls_for_build = tls.clone();
        let config = Reloading::new(
            tls.watched_files(),
            Box::new(move || tls_for_build.client_config()),
        )?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Runs the client handshake with `host` (a DNS name or an IP address, from the peer URL)
    /// as the name the server certificate must carry, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn connect<S>(&self, host: &str, stream: S) -> Result<ClientTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = futures_rustls::TlsConnector::from(self.config.current());
        within_handshake_timeout(connector.connect(server_name(host)?, stream)).await
    }

    /// The same handshake on a blocking socket, for a plain thread (a joining member asks the
    /// cluster before its executors run); the socket's read and write timeouts bound it.
    pub fn connect_blocking(
        &self,
        host: &str,
        mut stream: std::net::TcpStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, TlsError> {
        let mut conn = rustls::ClientConnection::new(self.config.current(), server_name(host)?)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut stream).map_err(TlsError::Handshake)?;
        }
        Ok(rustls::StreamOwned::new(conn, stream))
    }
}

/// Where a client looks for trusted CAs when it is given none, as Go's crypto/x509 does on
/// Linux: the system bundle of Debian, Fedora/RHEL and Alpine.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// How a client of the client port dials `https://` endpoints: etcdctl's `--cacert`, `--cert`,
/// `--key` and `--insecure-skip-tls-verify`. Unlike a member's [`TlsConfig`], presenting a
/// certificate is optional and the server is verified against the system's CAs when no CA file
/// is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (the handshake's signatures are still checked).
    pub insecure_skip_verify: bool,
}

impl DialTls {
    /// Whether any TLS flag was given: etcdctl then dials endpoints without a scheme with TLS.
    pub fn is_configured(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.insecure_skip_verify
    }

    /// A connector that follows the files on disk; offers ALPN "h2" (gRPC needs it).
    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        let this = self.clone();
        let files = [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let config = Reloading::new(files, Box::new(move || this.client_config()))?;
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(ring_provider::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        } else {
            let ca_file = match &self.ca_file {
                Some(file) => file.clone(),
                None => SYSTEM_CA_BUNDLES
                    .iter()
                    .map(PathBuf::from)
                    .find(|path| path.exists())
                    .ok_or(TlsError::DialWithoutCa)?,
            };
            builder.with_root_certificates(read_roots(&ca_file)?)
        };
        let mut config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                builder.with_client_auth_cert(read_certs(cert_file)?, read_key(key_file)?)?
            }
            _ => return Err(TlsError::CertWithoutKey),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The name a server certificate must carry: a DNS name or an IP address (brackets of an IPv6
/// URL host dropped).
fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
}

async fn within_handshake_timeout<T>(
    handshake: impl Future<Output = std::io::Result<T>>,
) -> Result<T, TlsError> {
    let handshake = async { handshake.await.map_err(TlsError::Handshake) };
    let deadline = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(TlsError::HandshakeTimeout(HANDSHAKE_TIMEOUT))
    };
    futures_lite::future::or(handshake, deadline).await
}

type Build<C> = Box<dyn Fn() -> Result<Arc<C>, TlsError> + Send + Sync>;

/// A config rebuilt whenever one of its files changes. Shared by every core: the lock is held
/// for three `stat`s per handshake, and for the rebuild on the rare handshake that sees a change.
struct Reloading<C> {
    files: Vec<PathBuf>,
    build: Build<C>,
    state: Mutex<(FilesStamp, Arc<C>)>,
}

impl<C> Reloading<C> {
    fn new(files: Vec<PathBuf>, build: Build<C>) -> Result<Self, TlsError> {
        let stamp = FilesStamp::of(&files);
        let config = build()?;
        Ok(Self {
            files,
            build,
            state: Mutex::new((stamp, config)),
        })
    }

    fn current(&self) -> Arc<C> {
        let stamp = FilesStamp::of(&self.files);
        let mut state = self.state.lock().expect("never poisoned");
        if state.0 != stamp {
            state.0 = stamp;
            match (self.build)() {
                Ok(config) => state.1 = config,
                Err(error) => {
                    eprintln!("basalt: TLS files changed but cannot be used, keeping the previous ones: {error}")
                }
            }
        }
        state.1.clone()
    }
}

/// What a file's identity and last change look like to `stat`: (inode, size, mtime in ns), or
/// `None` for a file that cannot be read. Renaming a new file into place changes the inode;
/// rewriting in place changes the mtime.
#[derive(Debug, PartialEq, Eq)]
struct FilesStamp(Vec<Option<(u64, u64, i128)>>);

impl FilesStamp {
    fn of(files: &[PathBuf]) -> Self {
        Self(
            files
                .iter()
                .map(|file| {
                    let meta = std::fs::metadata(file).ok()?;
                    let mtime_ns =
                        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
                    Some((meta.ino(), meta.len(), mtime_ns))
                })
                .collect(),
        )
    }
}

/// Accepts any server certificate (still checking the handshake's signatures): what a dialer
/// does with `--peer-auto-tls`, where every member made its own certificate and none can be
/// verified, as etcd does.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Makes (or reuses) `dir/cert.pem` and `dir/key.pem`, a self-signed ECDSA P-256 certificate
/// for `hosts` (IP addresses or DNS names) valid for `validity_years`: etcd's `--auto-tls` and
/// `--peer-auto-tls` (etcd uses P-521, which ring cannot sign with). Files already there are
/// reused, as etcd does, so a restarted member keeps its certificate.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<TlsConfig, TlsError> {
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let config = TlsConfig {
        self_signed: true,
        ..TlsConfig::new(cert_file.clone(), key_file.clone())
    };
    if cert_file.exists() && key_file.exists() {
        return Ok(config);
    }
    if validity_years == 0 {
        return Err(TlsError::SelfSigned(
            "the validity must be at least 1 year".into(),
        ));
    }
    let failed = |e: rcgen::Error| TlsError::SelfSigned(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(failed)?;
    let mut serial = [0u8; 16];
    ring_provider::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| TlsError::SelfSigned("no random bytes for the serial".into()))?;
    // A positive DER integer: clear the top bit.
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "basalt");
    params.not_before = time::OffsetDateTime::now_utc();
    params.not_after = params.not_before + time::Duration::days(365 * i64::from(validity_years));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    // Peers present the same certificate when they dial, so it serves both ends.
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).map_err(failed)?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    write_private(&key_file, key.serialize_pem().as_bytes()).map_err(write_error(&key_file))?;
    std::fs::write(&cert_file, cert.pem()).map_err(write_error(&cert_file))?;
    Ok(config)
}

/// Writes a file only its owner can read (a private key).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&read_file(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_file(path)?).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_path_buf()),
        e => TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Errors of building a TLS config or running a handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}: no certificate found")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key found")]
    NoKey(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("unexpected TLS cipher suite {0:?} (Basalt offers TLS 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305 only)")]
    CipherSuite(String),
    #[error("unexpected TLS version {0:?} (Basalt supports TLS1.2 and TLS1.3)")]
    Version(String),
    #[error("TLS min version is above the max version")]
    VersionRange,
    #[error("cipher suites cannot be configured when only TLS1.3 is allowed")]
    CipherSuitesWithTls13Only,
    #[error("client certificate authentication needs a trusted CA file")]
    ClientCertAuthWithoutCa,
    #[error("dialing with TLS needs a trusted CA file (or a self-signed certificate)")]
    DialWithoutCa,
    #[error("a client certificate and its key must be given together")]
    CertWithoutKey,
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutorBuilder;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    /// A fresh folder per test under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("basalt-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn new_ca(dir: &Path) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { cert, key }
    }

    /// Writes `{stem}.pem` and `{stem}-key.pem`, a leaf signed by `ca` for 127.0.0.1 with
    /// `common_name`, and returns the certificate's DER.
    fn issue(dir: &Path, stem: &str, ca: &Ca, common_name: &str) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        // Renamed into place, as a certificate manager does, so a reload never reads half.
        let temp = dir.join(format!("{stem}.tmp"));
        std::fs::write(&temp, key.serialize_pem()).unwrap();
        std::fs::rename(&temp, dir.join(format!("{stem}-key.pem"))).unwrap();
        std::fs::write(&temp, cert.pem()).unwrap();
        std::fs::rename(&temp, dir.join(format!("{stem}.pem"))).unwrap();
        cert.der().to_vec()
    }

    fn files(dir: &Path, stem: &str) -> TlsConfig {
        TlsConfig::new(
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        )
    }

    #[test]
    fn settings_are_checked_when_the_config_is_built() {
        let dir = temp_dir("settings");
        let ca = new_ca(&dir);
        issue(&dir, "server", &ca, "server");
        let server = files(&dir, "server");
        let with_ca = TlsConfig {
            trusted_ca_file: Some(dir.join("ca.pem")),
            client_cert_auth: true,
            ..server.clone()
        };
        let suites = |names: &[&str]| TlsConfig {
            cipher_suites: names.iter().map(|n| n.to_string()).collect(),
            ..server.clone()
        };
        let cases: Vec<(&str, TlsConfig, Option<&str>)> = vec![
            ("certificate and key", server.clone(), None),
            ("client certificates against a CA", with_ca.clone(), None),
            (
                "client-cert-auth without a CA",
                TlsConfig {
                    client_cert_auth: true,
                    ..server.clone()
                },
                Some("needs a trusted CA file"),
            ),
            (
                "missing key file",
                TlsConfig {
                    key_file: dir.join("nope.pem"),
                    ..server.clone()
                },
                Some("cannot read"),
            ),
            (
                "a certificate where the key should be",
                TlsConfig {
                    key_file: server.cert_file.clone(),
                    ..server.clone()
                },
                Some("no private key found"),
            ),
            (
                "Go's names, both ChaCha20 spellings and a TLS 1.3 suite",
                suites(&[
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
                    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                    "TLS_AES_128_GCM_SHA256",
                ]),
                None,
            ),
            (
                "a CBC suite rustls does not offer",
                suites(&["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]),
                Some("unexpected TLS cipher suite"),
            ),
            (
                "suites with TLS 1.3 only",
                TlsConfig {
                    min_version: TlsVersion::Tls13,
                    ..suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"])
                },
                Some("only TLS1.3"),
            ),
            (
                "min above max",
                TlsConfig {
                    min_version: TlsVersion::Tls13,
                    max_version: TlsVersion::Tls12,
                    ..server.clone()
                },
                Some("min version is above"),
            ),
        ];
        for (case, config, refusal) in cases {
            let got = config.validate().err().map(|e| e.to_string());
            match (refusal, got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{case}: {got}"),
                (want, got) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
        }
        assert!(matches!(
            server.client_config(),
            Err(TlsError::DialWithoutCa)
        ));
        assert!(with_ca.client_config().is_ok());
        assert!(TlsVersion::parse("TLS1.1").is_err());
    }

    /// One TLS connection over loopback: what the server saw as the client's name and the
    /// certificate the client was shown.
    fn handshake(acceptor: TlsAcceptor, connector: TlsConnector) -> (Option<String>, Vec<u8>) {
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let server = glommio::spawn_local(async move {
                    let stream = listener.accept().await.unwrap();
                    let stream = acceptor.accept(stream).await.unwrap();
                    client_common_name(&stream)
                });
                let stream = TcpStream::connect(addr).await.unwrap();
                let stream = connector.connect("127.0.0.1", stream).await.unwrap();
                let shown = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                (server.await, shown)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_verified_client_certificate_names_the_client_and_new_files_are_served() {
        let dir = temp_dir("handshake");
        let ca = new_ca(&dir);
        let first_der = issue(&dir, "server", &ca, "server");
        issue(&dir, "client", &ca, "alice");
        let with_ca = |config: TlsConfig| TlsConfig {
            trusted_ca_file: Some(dir.join("ca.pem")),
            ..config
        };
        let server = TlsConfig {
            client_cert_auth: true,
            ..with_ca(files(&dir, "server"))
        };
        let acceptor = TlsAcceptor::new(&server, CLIENT_ALPN_PROTOCOLS).unwrap();
        let connector = TlsConnector::new(&with_ca(files(&dir, "client"))).unwrap();

        let (name, shown) = handshake(acceptor.clone(), connector.clone());
        assert_eq!(name.as_deref(), Some("alice"));
        assert_eq!(shown, first_der);

        let renewed_der = issue(&dir, "server", &ca, "server");
        let (_, shown) = handshake(acceptor.clone(), connector.clone());
        assert_eq!(
            shown, renewed_der,
            "the next handshake serves the new files"
        );

        // A half-written key keeps the previous pair in service.
        std::fs::write(dir.join("server-key.pem"), "-----BEGIN PRIV").unwrap();
        let (_, shown) = handshake(acceptor, connector);
        assert_eq!(shown, renewed_der);
    }

    #[test]
    fn a_client_dials_with_or_without_a_certificate_of_its_own() {
        let dir = temp_dir("dial");
        let ca = new_ca(&dir);
        issue(&dir, "server", &ca, "server");
        issue(&dir, "client", &ca, "alice");
        let acceptor = TlsAcceptor::new(&files(&dir, "server"), CLIENT_ALPN_PROTOCOLS).unwrap();
        let anonymous = DialTls {
            ca_file: Some(dir.join("ca.pem")),
            ..DialTls::default()
        };
        let (name, _) = handshake(acceptor.clone(), anonymous.connector().unwrap());
        assert_eq!(name, None, "no client certificate was presented");

        let with_cert = DialTls {
            cert_file: Some(dir.join("client.pem")),
            key_file: Some(dir.join("client-key.pem")),
            ..anonymous.clone()
        };
        let server = TlsConfig {
            trusted_ca_file: Some(dir.join("ca.pem")),
            ..files(&dir, "server")
        };
        let requiring = TlsAcceptor::new(&server, CLIENT_ALPN_PROTOCOLS).unwrap();
        let (name, _) = handshake(requiring, with_cert.connector().unwrap());
        assert_eq!(name.as_deref(), Some("alice"));

        let (_, shown) = handshake(
            acceptor,
            DialTls {
                insecure_skip_verify: true,
                ..DialTls::default()
            }
            .connector()
            .unwrap(),
        );
        assert!(!shown.is_empty());
        let half_pair = DialTls {
            key_file: None,
            ..with_cert
        };
        assert!(matches!(
            half_pair.connector(),
            Err(TlsError::CertWithoutKey)
        ));
    }

    #[test]
    fn a_blocking_dial_completes_the_same_handshake() {
        let dir = temp_dir("blocking");
        let ca = new_ca(&dir);
        issue(&dir, "server", &ca, "server");
        issue(&dir, "client", &ca, "bob");
        let with_ca = |config: TlsConfig| TlsConfig {
            trusted_ca_file: Some(dir.join("ca.pem")),
            ..config
        };
        let acceptor = TlsAcceptor::new(&with_ca(files(&dir, "server")), &[]).unwrap();
        let connector = TlsConnector::new(&with_ca(files(&dir, "client"))).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dialer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let mut tls = connector.connect_blocking("127.0.0.1", stream).unwrap();
            tls.write_all(b"ping").unwrap();
            let mut reply = [0u8; 4];
            tls.read_exact(&mut reply).unwrap();
            reply
        });
        let name = LocalExecutorBuilder::default()
            .spawn(move || async move {
                use futures_lite::{AsyncReadExt, AsyncWriteExt};
                use std::os::fd::{FromRawFd, IntoRawFd};
                let (socket, _) = listener.accept().unwrap();
                // SAFETY: into_raw_fd gives up the std socket's ownership of a connected TCP
                // socket, so the glommio stream is its only owner and closes it.
                let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
                let mut stream = acceptor.accept(stream).await.unwrap();
                let mut ping = [0u8; 4];
                stream.read_exact(&mut ping).await.unwrap();
                stream.write_all(b"pong").await.unwrap();
                stream.flush().await.unwrap();
                client_common_name(&stream)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(&dialer.join().unwrap(), b"pong");
        assert_eq!(name.as_deref(), Some("bob"));
    }

    #[test]
    fn self_signed_pair_is_made_once_and_dialed_without_verification() {
        let dir = temp_dir("self-signed");
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let made = self_signed(&dir, &hosts, 1).unwrap();
        let cert_pem = std::fs::read(&made.cert_file).unwrap();
        let again = self_signed(&dir, &hosts, 1).unwrap();
        assert_eq!(again, made);
        assert_eq!(std::fs::read(&again.cert_file).unwrap(), cert_pem);
        let key_mode = std::fs::metadata(&made.key_file).unwrap().mode() & 0o777;
        assert_eq!(key_mode, 0o600);

        let acceptor = TlsAcceptor::new(&made, CLIENT_ALPN_PROTOCOLS).unwrap();
        let (name, _) = handshake(acceptor, TlsConnector::new(&made).unwrap());
        assert_eq!(name, None, "no client certificate is asked for");
        assert!(self_signed(&temp_dir("zero-years"), &hosts, 0).is_err());
    }
}
