-- mod_messenger_seed: provisions the stack's test accounts on a virtual host at startup.
--
-- On Messenger the contact list and profiles lived on the service, not in the XMPP client:
-- clients could only read them (roster: RFC 6121 §2.1.3 roster get; profiles: XEP-0054 vCard
-- get). So the demo and the tests need them provisioned server-side. This module reads the
-- seed file (`messenger_seed_file`, JSON: deploy/local/seed/accounts.json) and, for every
-- account that does not exist yet on this host:
--   * creates the account (password from the seed; on the Messenger host passwords are never
--     usable because PLAIN/SCRAM are disabled there, identity comes from OAuth tokens),
--   * writes its roster (items with name, subscription and one group),
--   * writes its vcard-temp vCard: FN, NICKNAME, PHOTO with TYPE and BINVAL (XEP-0054 §3),
--     into the same store mod_vcard serves it from.
-- Existing accounts are left alone, so what tests change on the standard host survives a
-- server restart; `deploy/local/stack down --wipe` (or deleting the data dir) re-seeds.

local st = require "util.stanza";
local json = require "util.json";
local usermanager = require "core.usermanager";
local rostermanager = require "core.rostermanager";

local host = module.host;
local seed_file = module:get_option_string("messenger_seed_file");
local vcards = module:open_store("vcard");

local function read_seed()
	local f, err = io.open(seed_file or "", "r");
	if not f then
		module:log("error", "Cannot read seed file %s: %s", tostring(seed_file), tostring(err));
		return nil;
	end
	local data = json.decode(f:read("*a"));
	f:close();
	return data;
end

local function make_vcard(account)
	local vcard = st.stanza("vCard", { xmlns = "vcard-temp" })
		:text_tag("FN", account.fn)
		:text_tag("NICKNAME", account.nickname);
	if account.photo_base64 then
		vcard:tag("PHOTO")
			:text_tag("TYPE", account.photo_type or "image/png")
			:text_tag("BINVAL", account.photo_base64)
		:up();
	end
	return vcard;
end

local function seed()
	local data = read_seed();
	if not data then return; end
	local created = 0;
	for username, account in pairs(data.accounts or {}) do
		if not usermanager.user_exists(username, host) then
			local ok, err = usermanager.create_user(username, account.password, host);
			if not ok then
				module:log("error", "Cannot create %s@%s: %s", username, host, tostring(err));
			else
				local roster = rostermanager.load_roster(username, host);
				for _, item in ipairs((data.rosters or {})[username] or {}) do
					roster[item.jid .. "@" .. host] = {
						name = item.name;
						subscription = item.subscription or "both";
						groups = item.group and { [item.group] = true } or {};
					};
				end
				rostermanager.save_roster(username, host, roster);
				vcards:set(username, st.preserialize(make_vcard(account)));
				created = created + 1;
			end
		end
	end
	module:log("info", "Seeded %d account(s) on %s", created, host);
end

function module.load()
	seed();
end
