//! TLS settings from etcd's flags, for the client port and for peers: the certificate files
//! given, or a self-signed pair (`--auto-tls`, `--peer-auto-tls`) made under the data
//! directory where etcd puts its own (`fixtures/client`, `fixtures/peer`). Building and
//! serving TLS is `basalt_net::tls`'s job; this module only reads flags.

use crate::config::ServerFlags;
use basalt_net::tls::{self, TlsConfig};
use std::path::{Path, PathBuf};

/// One side's flags, client or peer.
struct Side<'a> {
    /// `client` or `peer`: the fixtures folder of its self-signed pair.
    name: &'static str,
    /// What its flags start with: `--` or `--peer-`.
    flag_prefix: &'static str,
    cert_file: &'a Option<PathBuf>,
    key_file: &'a Option<PathBuf>,
    trusted_ca_file: &'a Option<PathBuf>,
    client_cert_auth: bool,
    auto_tls: bool,
    urls: Vec<&'a String>,
}

/// TLS of the client port's `https://` URLs; `None` when no client URL is `https://` (etcd
/// ignores certificates given for plain-text URLs).
pub fn client_tls(flags: &ServerFlags, data_dir: &Path) -> Result<Option<TlsConfig>, String> {
    side_tls(
        Side {
            name: "client",
            flag_prefix: "--",
            cert_file: &flags.cert_file,
            key_file: &flags.key_file,
            trusted_ca_file: &flags.trusted_ca_file,
            client_cert_auth: flags.client_cert_auth,
            auto_tls: flags.auto_tls,
            urls: flags.listen_client_urls.iter().collect(),
        },
        flags,
        data_dir,
    )
}

/// TLS of the peer URLs, for both accepting and dialing; `None` when no peer URL of this
/// member is `https://`.
pub fn peer_tls(flags: &ServerFlags, data_dir: &Path) -> Result<Option<TlsConfig>, String> {
    let urls = flags.listen_peer_urls.iter();
    side_tls(
        Side {
            name: "peer",
            flag_prefix: "--peer-",
            cert_file: &flags.peer_cert_file,
            key_file: &flags.peer_key_file,
            trusted_ca_file: &flags.peer_trusted_ca_file,
            client_cert_auth: flags.peer_client_cert_auth,
            auto_tls: flags.peer_auto_tls,
            urls: urls.chain(&flags.initial_advertise_peer_urls).collect(),
        },
        flags,
        data_dir,
    )
}

fn side_tls(
    side: Side<'_>,
    flags: &ServerFlags,
    data_dir: &Path,
) -> Result<Option<TlsConfig>, String> {
    if !side.urls.iter().any(|url| basalt_net::url_is_https(url)) {
        return Ok(None);
    }
    let prefix = side.flag_prefix;
    let config = match (side.cert_file, side.key_file) {
        (Some(cert_file), Some(key_file)) => TlsConfig {
            trusted_ca_file: side.trusted_ca_file.clone(),
            client_cert_auth: side.client_cert_auth,
            ..TlsConfig::new(cert_file.clone(), key_file.clone())
        },
        (Some(_), None) | (None, Some(_)) => {
            return Err(format!(
                "{prefix}cert-file and {prefix}key-file must be given together"
            ))
        }
        // As in etcd, a self-signed pair drops the CA and client-cert-auth flags: nothing
        // could sign a client certificate it would accept.
        (None, None) if side.auto_tls => {
            let hosts: Vec<String> = side
                .urls
                .iter()
                .filter_map(|url| basalt_net::url_host(url))
                .map(str::to_string)
                .collect();
            let dir = data_dir.join("fixtures").join(side.name);
            tls::self_signed(&dir, &hosts, flags.self_signed_cert_validity_years)
                .map_err(|e| format!("{} auto TLS: {e}", side.name))?
        }
        // The listener refuses an https:// URL without a certificate, in etcd's words.
        (None, None) => return Ok(None),
    };
    let config = TlsConfig {
        cipher_suites: flags
            .cipher_suites
            .iter()
            .filter(|name| !name.is_empty())
            .cloned()
            .collect(),
        min_version: flags.tls_min_version,
        max_version: flags.tls_max_version,
        ..config
    };
    config
        .validate()
        .map_err(|e| format!("{} TLS: {e}", side.name))?;
    Ok(Some(config))
}
