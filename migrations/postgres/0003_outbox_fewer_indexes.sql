-- Every state change of an outbox item (recorded, claimed, done) rewrote its entry in
-- outbox_state, a page write more per commit on the bridge's hottest path. Nothing needs it any
-- more: claims and backlog counts use outbox_unfinished, and only the listing of failed items
-- looked up by state; it gets a partial index that items enter only when they fail.
DROP INDEX outbox_state;
CREATE INDEX outbox_failed ON outbox (direction, id) WHERE state = 'failed';
