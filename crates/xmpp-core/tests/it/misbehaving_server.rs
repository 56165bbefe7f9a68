//! Bad input from a server: a scripted TLS server on loopback (using the stack's certificate)
//! logs the client in properly and then misbehaves. Each case must end only that session, with
//! a clear reason and a paced reconnect, while a real session beside it goes on untouched.

use std::sync::Arc;
use std::time::Duration;

use testkit::{StackEnv, oauth_tokens};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use xmpp_core::manager::{ConnectionState, ManagerEvent};
use xmpp_core::sasl::Credentials;

use crate::harness::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='xmpp.localhost' id='rogue' version='1.0'>";

/// What the rogue server does once the client is logged in (or instead of logging it in).
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    MalformedXml,
    BillionLaughs,
    OversizedStanza,
    InvalidUtf8,
    CutMidStanza,
    UnknownSaslFailure,
}

async fn read_until<S: AsyncRead + Unpin>(s: &mut S, pattern: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(pattern) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the client sent nothing more; so far: {}",
                    String::from_utf8_lossy(&got)
                )
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}

fn acceptor(env: &StackEnv) -> TlsAcceptor {
    use pki_types::pem::PemObject;
    let dir = std::path::Path::new(env.get("STACK_DIR")).join("tls");
    let certs: Vec<_> = pki_types::CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// Serves one connection; returns everything the client sent after the misbehaviour.
async fn serve_once(listener: &TcpListener, acceptor: &TlsAcceptor, what: Misbehaviour) -> String {
    let (mut tcp, _) = listener.accept().await.unwrap();
    read_until(&mut tcp, "<stream:stream").await;
    send(&mut tcp, format!("{HEADER}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>").as_bytes()).await;
    read_until(&mut tcp, "starttls").await;
    send(
        &mut tcp,
        b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )
    .await;
    let mut tls = acceptor.accept(tcp).await.unwrap();
    read_until(&mut tls, "<stream:stream").await;
    send(&mut tls, format!("{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>").as_bytes()).await;
    read_until(&mut tls, "</auth>").await;
    if let Misbehaviour::UnknownSaslFailure = what {
        send(&mut tls, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><quantum-flux/><text>???</text></failure>").await;
        return read_until(&mut tls, "\u{0}never").await;
    }
    send(
        &mut tls,
        b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    )
    .await;
    read_until(&mut tls, "<stream:stream").await;
    send(&mut tls, format!("{HEADER}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>").as_bytes()).await;
    read_until(&mut tls, "</iq>").await;
    send(&mut tls, b"<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>rogue@xmpp.localhost/r</jid></bind></iq>").await;
    // Let the client read its roster request out; answer nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match what {
        Misbehaviour::MalformedXml => send(&mut tls, b"<message><body>x</presence>").await,
        Misbehaviour::BillionLaughs => {
            send(&mut tls, b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><message>&lol2;</message>").await;
        }
        Misbehaviour::OversizedStanza => {
            send(&mut tls, b"<message><body>").await;
            send(&mut tls, &vec![b'a'; 64 * 1024]).await;
        }
        Misbehaviour::InvalidUtf8 => {
            send(&mut tls, b"<message><body>\xff\xfe\xfd</body></message>").await
        }
        Misbehaviour::CutMidStanza => {
            send(
                &mut tls,
                b"<message from='x@xmpp.localhost' type='chat'><body>half a mess",
            )
            .await;
            let _ = tls.shutdown().await;
            return String::new();
        }
        Misbehaviour::UnknownSaslFailure => unreachable!(),
    }
    read_until(&mut tls, "</stream:stream>").await
}

#[tokio::test]
async fn bad_streams_end_only_their_own_session() {
    let env = StackEnv::load();
    // A real session beside the rogue one.
    let tokens = oauth_tokens(&env, "alice", "smoke-test").await;
    let (mgr, mut rx) = manager_with(&env, |c| {
        c.backoff_initial = Duration::from_secs(30); // the rogue account must not reconnect mid-test
        c.backoff_max = Duration::from_secs(30);
    });
    mgr.start(
        messenger_account(&env, "good"),
        FixedCredentials::new(Credentials::AccessToken(tokens.access_token)),
    );
    wait_for(&mut rx, "good", T, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Connected { .. }))
    })
    .await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = acceptor(&env);

    for (what, reason_has, condition) in [
        (
            Misbehaviour::MalformedXml,
            "malformed XML",
            Some("not-well-formed"),
        ),
        (
            Misbehaviour::BillionLaughs,
            "restricted XML",
            Some("restricted-xml"),
        ),
        (
            Misbehaviour::OversizedStanza,
            "larger than the limit",
            Some("policy-violation"),
        ),
        (
            Misbehaviour::InvalidUtf8,
            "UTF-8",
            Some("unsupported-encoding"),
        ),
        (Misbehaviour::CutMidStanza, "connection", None),
        (Misbehaviour::UnknownSaslFailure, "quantum-flux", None),
    ] {
        let key = format!("rogue-{what:?}");
        let mut account = standard_account(&env, &key, "rogue");
        account.connection.port = port;
        account.connection.limits.max_stanza_bytes = 16 * 1024;
        // A stanza over the limit is read past up to this size (so one huge vCard does not end
        // the session); the endless one below goes beyond it.
        account.connection.limits.max_skip_bytes = 32 * 1024;
        let server = serve_once(&listener, &acceptor, what);
        mgr.start(
            account,
            FixedCredentials::new(Credentials::Password("pw".into())),
        );
        let client_sent = server.await;
        if let Some(condition) = condition {
            assert!(
                client_sent.contains(condition),
                "{what:?}: the client should answer with <{condition}/>: {client_sent}"
            );
        }
        let ev = wait_for(&mut rx, &key, T, |e| {
            matches!(
                e,
                ManagerEvent::State(
                    ConnectionState::TransientDisconnect { .. }
                        | ConnectionState::Failed { .. }
                        | ConnectionState::BadCredentials { .. }
                )
            )
        })
        .await;
        let ManagerEvent::State(ConnectionState::TransientDisconnect { reason, retry_in }) = ev
        else {
            panic!("{what:?}: expected a paced reconnect, got {ev:?}");
        };
        assert!(
            reason.contains(reason_has),
            "{what:?}: reason {reason:?} should mention {reason_has:?}"
        );
        assert!(
            retry_in >= Duration::from_secs(10),
            "{what:?}: reconnect must be paced, got {retry_in:?}"
        );
        mgr.stop(&key).await;

        // The real session is untouched: it still answers.
        let roster = mgr
            .roster("good")
            .await
            .unwrap_or_else(|e| panic!("after {what:?} the good session broke: {e}"));
        assert!(!roster.is_empty());
    }
    mgr.shutdown().await;
}
