#!/usr/bin/env escript
%%% deploy/local/ejabberd/seed.escript NODE DOMAIN SEED_FILE
%%%
%%% The stack's seed (deploy/local/seed/accounts.json) on its ejabberd node, as Prosody's
%%% mod_messenger_seed does on xmpp.localhost: every account that does not exist yet is
%%% registered with its password, then gets its roster (name, subscription, one group) and its
%%% vcard-temp (FN, NICKNAME, PHOTO with TYPE and BINVAL). Existing accounts are left alone, so
%%% what tests change survives restarts. Runs as a hidden Erlang node (deploy/local/stack passes
%%% the distribution flags in ERL_FLAGS); talks to the server with rpc. Exit 1 on any error.

main([Node0, Domain0, File]) ->
    Node = list_to_atom(Node0),
    Host = list_to_binary(Domain0),
    case net_adm:ping(Node) of
        pong -> ok;
        pang -> die("cannot reach the node ~s (cookie, distribution port?)", [Node])
    end,
    {ok, Json} = file:read_file(File),
    Seed = jiffy:decode(Json, [return_maps]),
    Accounts = lists:sort(maps:to_list(maps:get(<<"accounts">>, Seed))),
    Rosters = maps:get(<<"rosters">>, Seed, #{}),
    New = [User || {User, Account} <- Accounts,
                   register(Node, User, Host, maps:get(<<"password">>, Account))],
    lists:foreach(
      fun(User) ->
              Account = maps:get(User, maps:get(<<"accounts">>, Seed)),
              vcard(Node, User, Host, Account),
              [roster_item(Node, User, Host, Item) || Item <- maps:get(User, Rosters, [])],
              io:format("ejabberd seed: created ~s@~s~n", [User, Host])
      end, New),
    halt(0);
main(_) ->
    die("usage: seed.escript NODE DOMAIN SEED_FILE", []).

register(Node, User, Host, Password) ->
    case rpc:call(Node, ejabberd_auth, try_register, [User, Host, Password]) of
        ok -> true;
        {error, exists} -> false;
        Other -> die("register ~s: ~p", [User, Other])
    end.

vcard(Node, User, Host, Account) ->
    Fields = [{[<<"FN">>], <<"fn">>}, {[<<"NICKNAME">>], <<"nickname">>},
              {[<<"PHOTO">>, <<"TYPE">>], <<"photo_type">>},
              {[<<"PHOTO">>, <<"BINVAL">>], <<"photo_base64">>}],
    [ok(rpc:call(Node, mod_admin_extra, set_vcard, [User, Host | Path] ++ [Value]), {vcard, User, Path})
     || {Path, Key} <- Fields, Value <- [maps:get(Key, Account, undefined)], Value /= undefined].

roster_item(Node, User, Host, Item) ->
    Contact = maps:get(<<"jid">>, Item),
    Args = [User, Host, Contact, Host, maps:get(<<"name">>, Item, <<>>),
            maps:get(<<"group">>, Item, <<>>), maps:get(<<"subscription">>, Item, <<"both">>)],
    ok(rpc:call(Node, mod_admin_extra, add_rosteritem, Args), {roster, User, Contact}).

ok(ok, _) -> ok;
ok(0, _) -> ok;
ok(Other, What) -> die("~p: ~p", [What, Other]).

die(Format, Args) ->
    io:format(standard_error, "ejabberd seed: " ++ Format ++ "~n", Args),
    halt(1).
