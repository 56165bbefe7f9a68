//! Server certificates as people have them: Prosody's own self-signed certificate (made by
//! `prosodyctl cert generate`, CA:TRUE), pinned from the CA file or by its SHA-256 fingerprint,
//! and refused with the fix in the error otherwise.

use testkit::StackEnv;
use xmpp_core::ServerProfile;
use xmpp_core::connection::{
    ConnectError, ConnectionConfig, TlsSettings, establish, fingerprint, tls_client_config,
};
use xmpp_core::negotiation::NegotiationConfig;
use xmpp_core::sasl::{AuthIdentity, Credentials};

/// Logs carol in on the self-signed host with these TLS settings; returns the bound JID.
async fn login(env: &StackEnv, tls: TlsSettings) -> Result<String, ConnectError> {
    let domain = env.get("XMPP_SELFSIGNED_DOMAIN").to_owned();
    let connection = ConnectionConfig::new(domain.clone(), env.get("XMPP_HOST"), env.xmpp_port());
    let negotiation = NegotiationConfig {
        domain: domain.clone(),
        profile: ServerProfile::Standard,
        credentials: Credentials::Password("carolpass".into()),
        identity: AuthIdentity {
            username: Some("carol".into()),
            bare_jid: Some(format!("carol@{domain}")),
        },
        resource: None,
        mechanisms: None,
        stream_management: false,
        resume: None,
    };
    let tls = tls_client_config(&tls)?;
    establish(&connection, tls, &negotiation)
        .await
        .map(|e| e.negotiated.jid.to_string())
}

fn self_signed_der(env: &StackEnv) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_file(env.get("XMPP_SELFSIGNED_CERT"))
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn prosodys_self_signed_certificate_given_as_ca_file_is_pinned() {
    let env = StackEnv::load();
    let jid = login(
        &env,
        TlsSettings {
            ca_file: Some(env.get("XMPP_SELFSIGNED_CERT").into()),
            ..TlsSettings::default()
        },
    )
    .await
    .unwrap();
    assert!(jid.starts_with("carol@selfsigned."), "{jid}");
}

#[tokio::test]
async fn a_sha256_fingerprint_pin_is_accepted() {
    let env = StackEnv::load();
    let pin = fingerprint(&self_signed_der(&env));
    let jid = login(
        &env,
        TlsSettings {
            fingerprints: vec![pin.to_lowercase()],
            ..TlsSettings::default()
        },
    )
    .await
    .unwrap();
    assert!(jid.starts_with("carol@selfsigned."), "{jid}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_its_fingerprint_and_the_fix() {
    let env = StackEnv::load();
    // The stack's CA signs the other hosts' certificate, not this one.
    let err = login(
        &env,
        TlsSettings {
            ca_file: Some(env.get("XMPP_CA_FILE").into()),
            ..TlsSettings::default()
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Tls { .. }), "{text}");
    let pin = fingerprint(&self_signed_der(&env));
    assert!(text.contains(&pin), "{text}");
    assert!(
        text.contains("xmpp.ca_file") && text.contains("xmpp.tls_fingerprint"),
        "{text}"
    );
    // A wrong pin is no pin.
    let wrong = "00".repeat(32);
    let err = login(
        &env,
        TlsSettings {
            fingerprints: vec![wrong],
            ..TlsSettings::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
}
