-- Claims find each queue's head with one index seek per queue (a loose index scan over the
-- unfinished items) instead of scanning the whole backlog: a burst of thousands of messages
-- into one portal no longer makes every claim slower. Only unfinished items are indexed.
CREATE INDEX outbox_unfinished ON outbox (direction, queue_key, id)
    WHERE state IN ('pending', 'claimed');
DROP INDEX outbox_queue;
