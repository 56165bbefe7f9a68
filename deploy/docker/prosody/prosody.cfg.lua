-- Prosody config of the docker-compose demo: deploy/local/prosody/prosody.cfg.lua.in with the
-- compose values filled in (tests/deploy checks that every setting of the template is here).
-- Differences from the native stack, and why:
--   * listens on every interface of the container (the host publishes 127.0.0.1 only);
--   * runs as the prosody user (no run_as_root), logs to the console (docker logs);
--   * see-other-host points at prosody:5222, the name other containers reach it by;
--   * the OAuth provider is http://oauth:29318; its secret comes from the environment.
-- Two virtual hosts: messenger.localhost (the Messenger profile) and xmpp.localhost (standard).

pidfile = "/var/lib/prosody-demo/prosody.pid"
data_path = "/var/lib/prosody-demo/data"
plugin_paths = { "/usr/local/lib/prosody-demo/modules" }
log = { info = "*console" }

interfaces = { "*" }
local_interfaces = { "*" }
c2s_ports = { 5222 }
c2s_direct_tls_ports = { }
s2s_ports = { }
-- HTTP for the standard host's file share (XEP-0363), inside the compose network only (not
-- published): the bridge puts files there only with bridge.media_from_private_addresses.
http_ports = { 5280 }
http_interfaces = { "*" }
https_ports = { }
http_external_url = "http://prosody:5280/"
http_default_host = "upload.xmpp.localhost"
see_other_host_ports = { 5223 }
see_other_host_target = "prosody:5222"

authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true        -- STARTTLS required (RFC 6120 §5.3.1)
allow_registration = false
limits = { c2s = { rate = "100mb/s"; burst = "10s" } }
c2s_timeout = 60
-- As in the native stack: the Messenger host closes connections idle for 60 s (the real service
-- cut idle links after 1–2 minutes); see mod_messenger_profile.
network_settings = { read_timeout = 60 }

modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "uptime"; "version";
	"offline";          -- offline storage; delivered with XEP-0203 <delay/> stamps
	"vcard";            -- vcard-temp (XEP-0054) served from storage
	"see_other_host";   -- global listener (this project)
	"messenger_sasl";   -- token SASL mechanisms (this project)
	"messenger_seed";   -- accounts, rosters, vCards (this project)
}
modules_disabled = { "s2s"; "c2s_direct_tls" }

-- RFC 7662 introspection at the demo's OAuth provider, authenticated as client "prosody".
oauth_introspection_url = "http://oauth:29318/oauth20_introspect.srf"
oauth_introspection_client_id = "prosody"
oauth_introspection_client_secret = ENV_PROSODY_CLIENT_SECRET   -- Prosody reads ENV_<NAME> from the environment
messenger_seed_file = "/usr/local/share/prosody-demo/accounts.json"

certificates = "/tls"   -- (indexed by certmanager; the explicit ssl below wins)
ssl = {
	certificate = "/tls/server.crt";
	key = "/tls/server.key";
}

VirtualHost "messenger.localhost"
	modules_enabled = { "messenger_profile" }
	messenger_sasl_mechanisms = { "X-MESSENGER-OAUTH2" }
	messenger_oauth_required_scope = "wl.messenger"
	disable_sasl_mechanisms = { "PLAIN"; "SCRAM-SHA-1"; "SCRAM-SHA-1-PLUS"; "DIGEST-MD5"; "ANONYMOUS"; "EXTERNAL" }

VirtualHost "xmpp.localhost"
	messenger_sasl_mechanisms = { "OAUTHBEARER"; "X-OAUTH2" }
	disable_sasl_mechanisms = { "DIGEST-MD5" }
	-- Message carbons (XEP-0280) and an archive of every conversation kept a week (XEP-0313),
	-- as on today's servers; the Messenger host offers neither.
	modules_enabled = { "carbons"; "mam"; "smacks" }
	default_archive_policy = true
	archive_expires_after = "1w"
	smacks_hibernation_time = 300

-- XEP-0363 HTTP file upload for the standard host.
Component "upload.xmpp.localhost" "http_file_share"
	http_file_share_size_limit = 200 * 1024 * 1024
	http_file_share_expires_after = 7 * 86400
