//! Node addresses: what people type (`127.0.0.1:7001`, `http://node-1:7001`) turned into the
//! `http://HOST:PORT` URI that tonic connects to, with an error that says what a good one is.
//! The scheme stays `http` even with TLS: TLS is done by our connector (`tls::TlsConnector`), not
//! by tonic, which only sees the connection it gets.

use tonic::codegen::http::uri::Authority;

use crate::DialError;

/// Turns one address as a user wrote it into the URI to connect to.
///
/// Accepts `HOST:PORT`, `http://HOST:PORT` and `https://HOST:PORT` (a trailing `/` is fine); the
/// host may be a name, an IPv4 address or a bracketed IPv6 address (`[::1]:7001`). The port is
/// required: RiteRaft has no well-known port, so a missing one is almost certainly a mistake.
/// `https://` is only an alias: whether a connection uses TLS is the client's setting
/// (the client's TLS settings), not the address's, and the URI returned
/// is `http://` either way.
pub fn endpoint_uri(address: &str) -> Result<String, DialError> {
    let bad = |why: &str| {
        DialError::BadAddress(format!(
            "bad node address {address:?}: {why}; expected HOST:PORT, e.g. 127.0.0.1:7001"
        ))
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let rest = match trimmed.split_once("://") {
        None => trimmed,
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(bad("a node address has no path"));
    }
    if rest.contains('@') {
        return Err(bad("a node address has no user name"));
    }
    let authority: Authority = rest.parse().map_err(|_| bad("it is not HOST:PORT"))?;
    if authority.host().is_empty() {
        return Err(bad("the host is missing"));
    }
    // `Authority::port` is None both for "no port" and "not a u16": tell them apart by hand
    // (after the `]` of an IPv6 address, if any).
    let after_host = rest.rsplit_once(']').map_or(rest, |(_, tail)| tail);
    if !after_host.contains(':') {
        return Err(bad("the port is missing"));
    }
    match authority.port_u16() {
        None => Err(bad("the port is not a number from 1 to 65535")),
        Some(0) => Err(bad("port 0 is not a real port")),
        Some(_) => Ok(format!("http://{authority}")),
    }
}

/// The `HOST:PORT` of an address, checked and without scheme or trailing `/`: the form node
/// certificates name (`tls::node_uri`) and the host compares.
pub fn authority(address: &str) -> Result<String, DialError> {
    let uri = endpoint_uri(address)?;
    Ok(uri.strip_prefix("http://").unwrap_or(&uri).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_with_or_without_scheme_and_https_as_an_alias() {
        for (input, uri) in [
            ("127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("  127.0.0.1:7001 ", "http://127.0.0.1:7001"),
            ("http://127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("HTTP://node-1:7001/", "http://node-1:7001"),
            ("localhost:9", "http://localhost:9"),
            ("[::1]:7001", "http://[::1]:7001"),
            ("https://127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("HTTPS://node-1:7001/", "http://node-1:7001"),
        ] {
            assert_eq!(endpoint_uri(input).unwrap(), uri, "{input}");
            let bare = authority(input).unwrap();
            assert_eq!(format!("http://{bare}"), uri, "{input}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_node() {
        for (input, why) in [
            ("", "empty"),
            ("127.0.0.1", "port is missing"),
            ("http://127.0.0.1", "port is missing"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:99999", "1 to 65535"),
            ("https://127.0.0.1", "port is missing"),
            ("grpc://127.0.0.1:7001", "unknown scheme"),
            ("127.0.0.1:7001/raft", "no path"),
            ("me@127.0.0.1:7001", "no user name"),
            ("a b:7001", "not HOST:PORT"),
            (":7001", "host is missing"),
        ] {
            let err = endpoint_uri(input).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, DialError::BadAddress(_)), "{input}");
            assert!(message.contains(why), "{input}: {message}");
            assert!(message.contains("expected HOST:PORT"), "{input}: {message}");
        }
    }
}
