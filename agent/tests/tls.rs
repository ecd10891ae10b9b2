//! End-to-end: `wss://` with rustls. A TLS front (a certificate for
//! `localhost` issued by a throw-away CA) forwards to the mock dashboard; the
//! agent trusts the CA only through `NIXFLEET_CA_FILE`.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

struct Pki {
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key_der: Vec<u8>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_key_der: leaf_key.serialize_der(),
    }
}

/// Accepts TLS on a loopback port and pipes each connection to `backend`.
async fn tls_front(pki: &Pki, backend: std::net::SocketAddr) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.leaf_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf_key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_with_an_extra_ca_file() {
    let dash = dashboard().await;
    let pki = pki();
    let front = tls_front(&pki, dash.addr()).await;
    let fx = Fixture::new();
    let ca_file = fx.tmp.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let _agent = AgentBuilder::new(&format!("wss://localhost:{}/ws", front.port()), "tls", &fx)
        .env("NIXFLEET_CA_FILE", ca_file.to_str().unwrap())
        .spawn();
    let (_, seq) = wait_register(&dash, "tls", 0).await;
    dash.wait_frame("tls", "heartbeat", seq, WAIT)
        .await
        .expect("heartbeat over TLS");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn wss_refuses_a_certificate_it_does_not_trust() {
    let dash = dashboard().await;
    let pki = pki();
    let front = tls_front(&pki, dash.addr()).await;
    let fx = Fixture::new();
    // no NIXFLEET_CA_FILE: the throw-away CA is not among the system roots
    let agent =
        AgentBuilder::new(&format!("wss://localhost:{}/ws", front.port()), "tls", &fx).spawn();
    assert!(agent.log.wait_for("cannot connect", WAIT).await);
    let log = agent.log.text();
    assert!(
        log.to_lowercase().contains("certificate"),
        "the log should say why: {log}"
    );
    assert!(dash.frames("tls", None).is_empty(), "registered anyway");
}
